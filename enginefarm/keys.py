"""The cluster key: generating it, reading it safely, and a key ring for rotation."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import pwd
import secrets
import stat
import tempfile
from dataclasses import dataclass, field

from .errors import KeyFileError

KEY_BYTES = 32


def key_id(key: bytes) -> str:
    """A short public name for a key, so a verifier can pick the right one."""
    return hashlib.sha256(b"enginefarm-key-id" + key).hexdigest()[:8]


def generate_key_file(path: str, overwrite: bool = False) -> str:
    """Write a new random key (hex text) with mode 0600 and return its key id.

    Safe in a directory other users can write: the key goes to a fresh file of a random name
    that nobody can have planted, then replaces ``path``.

    Raises:
        KeyFileError: ``path`` is a symlink, exists and ``overwrite`` is false, or cannot be
            written.
    """
    if os.path.islink(path):
        raise KeyFileError(f"{path} is a symbolic link; refusing to write a key through it: "
                           "give the path of the key file itself")
    if os.path.exists(path) and not overwrite:
        raise KeyFileError(f"{path} already exists; pass --force to replace it")
    key = secrets.token_bytes(KEY_BYTES)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        _write_private(path, key.hex().encode() + b"\n")
    except OSError as exc:
        raise KeyFileError(f"cannot write cluster key {path}: {exc.strerror}") from exc
    return key_id(key)


def _write_private(path: str, data: bytes) -> None:
    """Put ``data`` at ``path`` whole or not at all, readable by its owner only."""
    directory, name = os.path.split(os.path.abspath(path))
    # mkstemp opens O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, under a random name: a file or
    # symlink someone placed in advance is never written through.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself survive a crash (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_key_file(path: str) -> bytes:
    """Read a key file, refusing a symlink, a file another user owns and one that group or
    others can read.

    Raises:
        KeyFileError: missing, not ours, too open, or not a key; the message says what to run.
    """
    fd = _open_key(path)
    try:
        # Judged on the opened file itself: nothing can swap it between the check and the read.
        _check_key_file(path, os.fstat(fd))
        try:
            text = os.read(fd, 4096).strip()
        except OSError as exc:
            raise KeyFileError(f"cannot read cluster key {path}: {exc.strerror}; "
                               f"ENGINEFARM_KEY_FILE must name a key file made by 'enginefarm keygen'") from exc
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:
        raise KeyFileError(f"{path} does not hold a key: run 'enginefarm keygen --force {path}'")
    return key


def _open_key(path: str) -> int:
    # O_NONBLOCK: a FIFO planted as the key must not hang the daemon reading it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise KeyFileError(
            f"no cluster key at {path}: run 'enginefarm keygen {path}' "
            "or set ENGINEFARM_KEY_FILE to an existing key"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(f"cluster key {path} is a symbolic link: set ENGINEFARM_KEY_FILE "
                               f"to the key file itself ({os.path.realpath(path)})") from None
        raise KeyFileError(f"cannot read cluster key {path}: {exc.strerror}; "
                           f"ENGINEFARM_KEY_FILE must name a key file made by 'enginefarm keygen'") from exc


def _check_key_file(path: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"cannot read cluster key {path}: not a regular file; "
                           f"ENGINEFARM_KEY_FILE must name a key file made by 'enginefarm keygen'")
    me = os.geteuid()
    # Whoever owns the key can change it, and so decide what this process trusts and runs;
    # that holds for root too, so no uid is exempt.
    if info.st_uid != me:
        raise KeyFileError(
            f"cluster key {path} is owned by uid {info.st_uid}{_user_name(info.st_uid)}, not by "
            f"uid {me}{_user_name(me)} that reads it: run 'chown {me} {path}' or make a key "
            f"of your own with 'enginefarm keygen'"
        )
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"cluster key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}): run 'chmod 600 {path}'"
        )


def _user_name(uid: int) -> str:
    try:
        return f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return ""


@dataclass(frozen=True)
class KeyRing:
    """The key to sign with, and every key accepted when verifying (by key id)."""

    signing_key: bytes
    accepted: dict[str, bytes] = field(default_factory=dict)

    @functools.cached_property
    def signing_id(self) -> str:
        return key_id(self.signing_key)

    def lookup(self, kid: str) -> bytes | None:
        if kid == self.signing_id:
            return self.signing_key
        return self.accepted.get(kid)

    @classmethod
    def from_key(cls, key: bytes, *old: bytes) -> KeyRing:
        return cls(key, {key_id(k): k for k in old})

    @classmethod
    def from_files(cls, path: str, old_paths: str = "") -> KeyRing:
        """Load the signing key and any older keys (comma-separated paths).

        Raises:
            KeyFileError: any file is missing, too open or malformed.
        """
        old = [read_key_file(p.strip()) for p in old_paths.split(",") if p.strip()]
        return cls.from_key(read_key_file(path), *old)
