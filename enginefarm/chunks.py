"""Helpers that travel to engines by reference (kept tiny: the engine's child imports them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def call_chunk(function: Callable[..., Any], arg_tuples: Sequence[tuple[Any, ...]]) -> list[Any]:
    """One load-balanced map chunk: ``function`` applied to each argument tuple, in order."""
    return [function(*args) for args in arg_tuples]


def call_map(function: Callable[..., Any], *parts: Sequence[Any]) -> list[Any]:
    """One engine's share of a DirectView map: ``function`` over its parts, in order."""
    return list(map(function, *parts))
