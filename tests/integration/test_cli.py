"""The ``enginefarm`` command as a user runs it: keygen, an engine with a bad key, a local cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from enginefarm.keys import key_id, read_key_file
from enginefarm.local import settings_env
from enginefarm.store import Registry

from ..harness import queue_exists, wait_for

TIMEOUT_S = 60
ENGINEFARM = os.path.join(os.path.dirname(sys.executable), "enginefarm")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENGINEFARM, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def mode_of(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as handle:
        return handle.read().strip()


def pid_alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None and fields[0] not in ("Z", "X"):
                parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# --- keygen -------------------------------------------------------------------------------
def test_keygen_writes_a_private_key_and_prints_its_id(tmp_path):
    path = str(tmp_path / "conf" / "cluster.key")
    result = run_cli("keygen", path)
    assert result.returncode == 0, result.stderr
    assert mode_of(path) == 0o600
    kid = key_id(read_key_file(path))
    assert result.stdout == f"wrote key {kid} to {path}\n"


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path):
    path = str(tmp_path / "cluster.key")
    assert run_cli("keygen", path).returncode == 0
    key = read_key_file(path)
    refused = run_cli("keygen", path)
    assert_one_clear_line(refused, "already exists", "--force")
    assert read_key_file(path) == key
    forced = run_cli("keygen", "--force", path)
    assert forced.returncode == 0
    assert read_key_file(path) != key
    assert forced.stdout == f"wrote key {key_id(read_key_file(path))} to {path}\n"


def test_keygen_without_path_uses_the_configured_key_file(tmp_path):
    path = str(tmp_path / "from-env.key")
    env = {**os.environ, "ENGINEFARM_KEY_FILE": path}
    result = run_cli("keygen", env=env)
    assert result.returncode == 0
    assert result.stdout == f"wrote key {key_id(read_key_file(path))} to {path}\n"


def test_keygen_through_a_symlink_is_one_clear_line(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "cluster.key"
    link.symlink_to(victim)
    refused = run_cli("keygen", "--force", str(link))
    assert_one_clear_line(refused, f"{link} is a symbolic link")
    assert victim.read_text() == "precious\n"


# --- an engine with an unusable key -------------------------------------------------------
def engine_env(settings, key_path: str) -> dict[str, str]:
    env = settings_env(settings)
    env["ENGINEFARM_KEY_FILE"] = key_path
    return env


def nothing_registered(cluster) -> bool:
    return cluster.redis().hlen(cluster.names.engines) == 0


def test_engine_with_missing_key_fails_with_one_line_about_keygen(settings, cluster, tmp_path):
    missing = str(tmp_path / "no-such.key")
    result = run_cli("engine", "--cluster", settings.cluster, env=engine_env(settings, missing))
    line = assert_one_clear_line(result, f"enginefarm keygen {missing}")
    assert line.startswith("Error: no cluster key at")
    assert nothing_registered(cluster)


def test_engine_with_group_readable_key_fails_with_one_line_about_chmod(settings, cluster, tmp_path):
    exposed = str(tmp_path / "exposed.key")
    shutil.copyfile(settings.key_file, exposed)
    os.chmod(exposed, 0o640)
    result = run_cli("engine", "--cluster", settings.cluster, env=engine_env(settings, exposed))
    assert_one_clear_line(result, f"chmod 600 {exposed}", "mode 640")
    assert nothing_registered(cluster)


def test_engine_with_a_key_owned_by_another_user_fails_with_one_line_about_chown(settings, cluster, tmp_path):
    foreign = str(tmp_path / "foreign.key")
    shutil.copyfile(settings.key_file, foreign)
    os.chmod(foreign, 0o600)
    os.chown(foreign, 65534, -1)
    result = run_cli("engine", "--cluster", settings.cluster, env=engine_env(settings, foreign))
    assert_one_clear_line(result, "owned by uid 65534", f"chown {os.geteuid()} {foreign}")
    assert nothing_registered(cluster)


def test_engine_with_a_directory_as_key_file_fails_with_one_line(settings, cluster, tmp_path):
    # e.g. ENGINEFARM_KEY_FILE=~/.config/enginefarm instead of .../enginefarm/key
    folder = tmp_path / "enginefarm"
    folder.mkdir(mode=0o700)
    result = run_cli("engine", "--cluster", settings.cluster, env=engine_env(settings, str(folder)))
    assert_one_clear_line(result, f"cannot read cluster key {folder}", "enginefarm keygen")
    assert nothing_registered(cluster)


def test_engine_with_a_bad_cluster_name_fails_with_one_line(settings):
    result = run_cli("engine", "--cluster", "no.dots", env=settings_env(settings))
    assert_one_clear_line(result, "invalid cluster name 'no.dots'")


# --- server URLs that cannot work --------------------------------------------------------
@pytest.mark.parametrize("command", [["status"], ["engine"], ["scheduler"]], ids=lambda c: c[0])
@pytest.mark.parametrize("var, url", [
    ("ENGINEFARM_REDIS_URL", "redis://127.0.0.1:notaport/0"),
    ("ENGINEFARM_AMQP_URL", "amqp://guest:guest@127.0.0.1:99999/%2F"),
], ids=["redis-port", "amqp-port"])
def test_a_malformed_server_url_is_one_clear_line(settings, command, var, url):
    env = {**settings_env(settings), var: url}
    result = run_cli(*command, env=env)
    assert result.returncode == 1
    assert_one_clear_line(result, f"Error: {var} ", "invalid port")


# --- a local cluster in the foreground ----------------------------------------------------
def test_cluster_command_prints_ready_and_sigint_stops_everything(settings, cluster, tmp_path):
    out_path, err_path = tmp_path / "cluster.out", tmp_path / "cluster.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([ENGINEFARM, "cluster", "-n", "2", "--cluster", settings.cluster],
                                env=settings_env(settings), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    spawned: set[int] = set()
    try:
        # Given the cluster says it is ready
        def ready_line() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"cluster exited with {proc.returncode}:\n{err_path.read_text()}")
            lines = [l for l in out_path.read_text().splitlines() if "ready" in l]
            return lines[0] if lines else None

        line = wait_for(ready_line, TIMEOUT_S, "the ready line")
        assert line == f"cluster '{settings.cluster}' ready: engines [0, 1]"
        registry = Registry(cluster.redis(), cluster.names, settings.engine_timeout_s)
        assert registry.live_ids() == [0, 1]
        engine_pids = {info["pid"] for info in registry.info().values()}
        spawned = descendants(proc.pid)
        # (a scheduler, two engines and each engine's child)
        assert engine_pids <= spawned and len(spawned) == 5
        # each daemon named for what it is (they are forks of the cluster command)
        assert sorted(comm(p) for p in spawned if stat_fields(p)[1] == str(proc.pid)) == \
            ["ef-engine", "ef-engine", "ef-scheduler"]
        # When it gets SIGINT (Ctrl-C)
        proc.send_signal(signal.SIGINT)
        # Then it exits, and every process it started is gone, engines unregistered and their queues removed
        assert proc.wait(TIMEOUT_S) == 0
        wait_for(lambda: not any(pid_alive(p) for p in spawned), TIMEOUT_S, "the cluster's processes to exit")
        assert registry.info() == {}
        assert not queue_exists(settings, cluster.names.engine_queue(0))
        assert not queue_exists(settings, cluster.names.engine_queue(1))
        assert "Traceback" not in err_path.read_text()
    finally:
        for pid in spawned | ({proc.pid} if proc.poll() is None else set()):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(TIMEOUT_S)


def test_cluster_command_stops_on_sigterm_too(settings, cluster, tmp_path):
    out_path = tmp_path / "cluster.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([ENGINEFARM, "cluster", "-n", "1", "--cluster", settings.cluster],
                                env=settings_env(settings), stdout=out, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
    spawned: set[int] = set()
    try:
        wait_for(lambda: "ready" in out_path.read_text() or proc.poll() is not None, TIMEOUT_S, "the ready line")
        assert proc.poll() is None
        spawned = descendants(proc.pid)
        assert len(spawned) == 3  # a scheduler, an engine and its child
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT_S) == 0
        wait_for(lambda: not any(pid_alive(p) for p in spawned), TIMEOUT_S, "the cluster's processes to exit")
    finally:
        for pid in spawned | ({proc.pid} if proc.poll() is None else set()):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(TIMEOUT_S)
