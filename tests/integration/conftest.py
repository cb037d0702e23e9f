"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import Amqp


@pytest.fixture
def gates(cluster, tmp_path):
    """Gate files; all are opened at teardown (before the cluster stops) so no task hangs."""
    made: list[Path] = []

    def new(name="gate"):
        path = tmp_path / f"{name}-{len(made)}.open"
        made.append(path)
        return str(path)

    yield new
    for path in made:
        path.touch()


@pytest.fixture
def amqp(settings) -> Iterator[Amqp]:
    """A plain pika connection, as someone with publish access to the broker has."""
    handle = Amqp(settings.amqp_url)
    try:
        yield handle
    finally:
        handle.close()
