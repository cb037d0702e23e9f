"""The ``gates`` fixture of the task-farming tests: gate files (``farm_tasks.Gates``), every one
still closed opened at teardown, so a failing test never leaves an engine blocked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import farm_tasks as ft


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[ft.Gates]:
    handle = ft.Gates(tmp_path)
    yield handle
    handle.open_all()
