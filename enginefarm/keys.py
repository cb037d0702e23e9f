"""The cluster key: generating it, reading it safely, and a key ring for rotation."""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field

from .errors import KeyFileError

KEY_BYTES = 32


def key_id(key: bytes) -> str:
    """A short public name for a key, so a verifier can pick the right one."""
    return hashlib.sha256(b"enginefarm-key-id" + key).hexdigest()[:8]


def generate_key_file(path: str, overwrite: bool = False) -> str:
    """Write a new random key (hex text) with mode 0600 and return its key id.

    Raises:
        KeyFileError: the file exists and ``overwrite`` is false.
    """
    if os.path.exists(path) and not overwrite:
        raise KeyFileError(f"{path} already exists; pass --force to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key_id(key)


def read_key_file(path: str) -> bytes:
    """Read a key file, refusing one that group or others can read.

    Raises:
        KeyFileError: missing, too open, or not a key; the message says what to run.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(
            f"no cluster key at {path}: run 'enginefarm keygen {path}' "
            "or set ENGINEFARM_KEY_FILE to an existing key"
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"cluster key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}): run 'chmod 600 {path}'"
        )
    try:
        with open(path, "rb") as handle:
            text = handle.read(4096).strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read cluster key {path}: {exc.strerror}; "
                           f"ENGINEFARM_KEY_FILE must name a key file made by 'enginefarm keygen'") from exc
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:
        raise KeyFileError(f"{path} does not hold a key: run 'enginefarm keygen --force {path}'")
    return key


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
