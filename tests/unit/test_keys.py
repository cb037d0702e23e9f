"""The cluster key file: generating, reading safely, loading a ring for rotation (no servers)."""

from __future__ import annotations

import os
import stat

import pytest

from enginefarm.errors import ConfigError, KeyFileError
from enginefarm.keys import KEY_BYTES, KeyRing, generate_key_file, key_id, read_key_file


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def key_in(path) -> bytes:
    with open(path, encoding="ascii") as handle:
        return bytes.fromhex(handle.read().strip())


# --- keygen -------------------------------------------------------------------------------
def test_keygen_writes_hex_key_with_mode_0600(tmp_path):
    path = tmp_path / "cluster.key"
    kid = generate_key_file(str(path))
    assert mode_of(path) == 0o600
    text = path.read_text(encoding="ascii")
    assert text.endswith("\n") and text.count("\n") == 1
    assert all(c in "0123456789abcdef" for c in text.strip())
    key = bytes.fromhex(text.strip())
    assert len(key) == KEY_BYTES
    assert kid == key_id(key)
    # Nothing but the key is left behind (no temporary file).
    assert os.listdir(tmp_path) == ["cluster.key"]


def test_keygen_mode_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "k"
        generate_key_file(str(path))
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600


def test_keygen_creates_missing_directories_private(tmp_path):
    path = tmp_path / "conf" / "enginefarm" / "key"
    generate_key_file(str(path))
    assert mode_of(path) == 0o600
    assert mode_of(tmp_path / "conf" / "enginefarm") & 0o077 == 0


def test_keys_are_random(tmp_path):
    ids = {generate_key_file(str(tmp_path / f"k{i}")) for i in range(5)}
    assert len(ids) == 5


def test_keygen_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "k"
    generate_key_file(str(path))
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as info:
        generate_key_file(str(path))
    assert "already exists" in str(info.value) and "--force" in str(info.value)
    assert path.read_bytes() == before


def test_keygen_with_force_replaces_the_key(tmp_path):
    path = tmp_path / "k"
    old_id = generate_key_file(str(path))
    old_key = key_in(path)
    new_id = generate_key_file(str(path), overwrite=True)
    assert new_id != old_id and key_in(path) != old_key
    assert new_id == key_id(key_in(path))
    assert mode_of(path) == 0o600


def test_keygen_force_tightens_an_existing_open_file(tmp_path):
    path = tmp_path / "k"
    path.write_text("00" * 32 + "\n")
    path.chmod(0o644)
    generate_key_file(str(path), overwrite=True)
    assert mode_of(path) == 0o600


# --- keygen into a directory others can write ---------------------------------------------
NOBODY = 65534


def test_keygen_does_not_follow_a_symlink_planted_at_a_guessable_temp_name(tmp_path):
    # Given another user's symlink where a temp file named after the key and our pid would go
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "cluster.key"
    planted = tmp_path / f"cluster.key.tmp{os.getpid()}"
    planted.symlink_to(victim)
    # When the key is generated there
    kid = generate_key_file(str(path))
    # Then the victim is untouched, the link is left as it was, and the key is a file of its own
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    assert not path.is_symlink() and mode_of(path) == 0o600
    assert key_id(read_key_file(str(path))) == kid


def test_keygen_does_not_write_into_a_pre_created_temp_file(tmp_path):
    # Given a file another user made (and may hold open) at a guessable temp name
    path = tmp_path / "cluster.key"
    planted = tmp_path / f"cluster.key.tmp{os.getpid()}"
    planted.write_text("")
    planted.chmod(0o666)
    # When the key is generated
    generate_key_file(str(path))
    # Then that file never received the key
    assert planted.read_text() == ""
    assert sorted(os.listdir(tmp_path)) == ["cluster.key", planted.name]


@pytest.mark.parametrize("overwrite", [False, True])
def test_keygen_refuses_a_symlink_at_the_key_path(tmp_path, overwrite):
    # Given the key path is a symlink (dangling, or to a file another user wants overwritten)
    victim = tmp_path / "victim"
    if overwrite:
        victim.write_text("precious\n")
    path = tmp_path / "cluster.key"
    path.symlink_to(victim)
    # When a key is generated there, with or without --force
    with pytest.raises(KeyFileError) as info:
        generate_key_file(str(path), overwrite=overwrite)
    # Then it is refused in one line and nothing is written anywhere
    assert "symbolic link" in str(info.value) and "\n" not in str(info.value)
    assert path.is_symlink()
    assert (victim.read_text() == "precious\n") if overwrite else not victim.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["cluster.key", *(["victim"] if overwrite else [])])


# --- reading ------------------------------------------------------------------------------
def test_read_key_file_returns_the_key(tmp_path):
    path = tmp_path / "k"
    kid = generate_key_file(str(path))
    key = read_key_file(str(path))
    assert len(key) == KEY_BYTES and key_id(key) == kid


def test_missing_key_file_says_to_run_keygen(tmp_path):
    path = str(tmp_path / "nowhere" / "key")
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    message = str(info.value)
    assert f"enginefarm keygen {path}" in message
    assert "ENGINEFARM_KEY_FILE" in message
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o601, 0o700 | 0o040])
def test_group_or_other_accessible_key_says_chmod(tmp_path, mode):
    path = tmp_path / "k"
    generate_key_file(str(path))
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        read_key_file(str(path))
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert f"mode {mode:o}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path, mode):
    path = tmp_path / "k"
    generate_key_file(str(path))
    path.chmod(mode)
    assert len(read_key_file(str(path))) == KEY_BYTES


def test_a_symlink_to_a_key_is_refused(tmp_path):
    real = tmp_path / "real.key"
    generate_key_file(str(real))
    link = tmp_path / "cluster.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError) as info:
        read_key_file(str(link))
    assert f"cluster key {link} is a symbolic link" in str(info.value)


def test_a_key_owned_by_another_user_is_refused(tmp_path):
    # Given a private key file that another user owns (and so could rewrite)
    path = tmp_path / "k"
    generate_key_file(str(path))
    os.chown(path, NOBODY, -1)
    # When it is read, then it is refused in one line naming the owner and the way out
    with pytest.raises(KeyFileError) as info:
        read_key_file(str(path))
    message = str(info.value)
    assert f"owned by uid {NOBODY}" in message and f"uid {os.geteuid()}" in message
    assert f"chown {os.geteuid()} {path}" in message and "\n" not in message


@pytest.mark.parametrize("content", [b"", b"not hex at all", b"abcd", b"00" * 15, b"\xff\xfe" * 20])
def test_a_file_without_a_key_is_refused(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        read_key_file(str(path))
    assert f"enginefarm keygen --force {path}" in str(info.value)


def test_a_directory_is_not_a_key(tmp_path):
    # e.g. ENGINEFARM_KEY_FILE=~/.config/enginefarm instead of .../enginefarm/key
    folder = tmp_path / "enginefarm"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyFileError) as info:
        read_key_file(str(folder))
    assert str(folder) in str(info.value)


def test_surrounding_whitespace_is_allowed(tmp_path):
    path = tmp_path / "k"
    path.write_text("  " + "ab" * 16 + "\n\n")
    path.chmod(0o600)
    assert read_key_file(str(path)) == bytes.fromhex("ab" * 16)


# --- key ring from files ------------------------------------------------------------------
def test_ring_from_files_with_old_keys_for_rotation(tmp_path):
    new, old1, old2 = (str(tmp_path / n) for n in ("new", "old1", "old2"))
    new_id, old1_id, old2_id = generate_key_file(new), generate_key_file(old1), generate_key_file(old2)
    ring = KeyRing.from_files(new, f"{old1}, {old2},")
    assert ring.signing_id == new_id
    assert ring.lookup(old1_id) == read_key_file(old1)
    assert ring.lookup(old2_id) == read_key_file(old2)
    assert KeyRing.from_files(new).accepted == {}


def test_ring_from_files_refuses_an_open_old_key(tmp_path):
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    generate_key_file(new)
    generate_key_file(old)
    os.chmod(old, 0o644)
    with pytest.raises(KeyFileError) as info:
        KeyRing.from_files(new, old)
    assert "chmod" in str(info.value)
