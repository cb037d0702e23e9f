"""Fixtures: a key per session, a fresh cluster name per test, real daemons cleaned up by PID."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from enginefarm import Client
from enginefarm.config import Settings
from enginefarm.keys import generate_key_file

from .harness import Cluster


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("keys") / "cluster.key")
    generate_key_file(path)
    return path


@pytest.fixture
def settings(key_file: str) -> Settings:
    """Settings for a cluster nobody else uses; short liveness timings keep tests quick."""
    return Settings.load(
        env={},
        cluster=f"t{uuid.uuid4().hex[:10]}",
        key_file=key_file,
        heartbeat_interval_s=0.5,
        engine_timeout_s=3.0,
        drain_timeout_s=20.0,
    )


@pytest.fixture
def cluster(settings: Settings, tmp_path: os.PathLike[str]) -> Iterator[Cluster]:
    handle = Cluster(settings, str(tmp_path))
    try:
        yield handle
    finally:
        handle.teardown()


@pytest.fixture
def client(settings: Settings, cluster: Cluster) -> Iterator[Client]:
    c = Client(settings=settings)
    try:
        yield c
    finally:
        c.close()
