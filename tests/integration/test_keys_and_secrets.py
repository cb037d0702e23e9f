"""Key rotation across a running cluster, and credentials that never reach a log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from enginefarm import Client
from enginefarm.errors import RemoteError
from enginefarm.keys import generate_key_file
from enginefarm.local import settings_env

from ..harness import Cluster


def test_rotation_accepts_old_and_new_keys_by_key_id(settings, tmp_path):
    # Given engines already on the new key, which still accept the old one
    old_key, new_key = str(tmp_path / "old.key"), str(tmp_path / "new.key")
    generate_key_file(old_key)
    generate_key_file(new_key)
    engines_settings = settings.replace(key_file=new_key, old_key_files=old_key)
    cluster = Cluster(engines_settings, str(tmp_path))
    try:
        cluster.start_engines(2)
        # When a client still signs with the old key (and accepts results under the new one)
        lagging = settings.replace(key_file=old_key, old_key_files=new_key)
        with Client(settings=lagging) as client:
            assert client.direct_view().apply(pow, 2, 4) == [16, 16]
        with Client(settings=engines_settings) as client:
            assert client.direct_view().apply(pow, 3, 2) == [9, 9]
        # Once the old key is retired, its messages are refused (dead-lettered, never run).
        stranger = settings.replace(key_file=old_key, old_key_files="")
        with Client(settings=engines_settings) as admin:
            before = admin.records.counter("dead_lettered:unknown-key")
        retired = settings.replace(key_file=new_key, old_key_files="")
        cluster.stop_all()
        cluster2 = Cluster(retired, str(tmp_path / "second"))
        os.makedirs(cluster2.tmp_dir, exist_ok=True)
        cluster2.start_engines(1)
        with Client(settings=stranger) as client:
            result = client[0].apply(pow, 2, 2, block=False)
            # It never runs, and its record says why rather than staying pending.
            with pytest.raises(RemoteError) as refused:
                result.get(timeout=30)
            assert refused.value.ename == "MessageRefused" and "unknown-key" in refused.value.evalue
            assert client.records.get(result.task_ids[0]).started is None
        with Client(settings=retired) as admin:
            from ..harness import wait_for

            wait_for(lambda: admin.records.counter("dead_lettered:unknown-key") == before + 1, 30,
                     "the old-key message to be dead-lettered")
        cluster2.stop_all()
    finally:
        cluster.teardown()


def test_credentials_never_logged(settings, tmp_path):
    secret = "hunter2-not-for-logs"
    bad = settings.replace(amqp_url=f"amqp://guest:{secret}@127.0.0.1:1/%2F",
                           redis_url=f"redis://default:{secret}@127.0.0.1:1/0", reconnect_window_s=1.0)
    env = settings_env(bad)
    # Commands that give up: one clear line, no secret.
    for args in (["engine"], ["status"]):
        proc = subprocess.run([sys.executable, "-m", "enginefarm", "--log-level", "DEBUG", *args],
                              env=env, capture_output=True, text=True, timeout=120)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert secret not in output, output
        assert "Error:" in output
    # A daemon that keeps trying: its log says why, without the secret.
    proc = subprocess.Popen([sys.executable, "-m", "enginefarm", "--log-level", "DEBUG", "scheduler"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "cannot reach Redis" in line:
                break
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert "cannot reach Redis" in output
    assert secret not in output, output
