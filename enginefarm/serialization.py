"""Pickling of user objects. The only module that imports cloudpickle.

``loads`` must only ever see bytes whose signature was verified (see protocol).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, cast

import cloudpickle

from .errors import SerializationError


def describe(obj: Any) -> str:
    """A short human name for an object, for error messages."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    kind = type(obj).__name__
    if name:
        return f"{kind} {name!r}"
    text = repr(obj)
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}"


def dumps(obj: Any, what: str = "") -> bytes:
    """Pickle ``obj`` by value where needed.

    Raises:
        SerializationError: naming ``what`` (or the object) and the reason.
    """
    try:
        return cast(bytes, cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))  # cloudpickle is untyped
    except Exception as exc:  # pickling can raise nearly anything
        label = what or describe(obj)
        raise SerializationError(f"cannot pickle {label}: {type(exc).__name__}: {exc}") from exc


def loads(data: bytes, what: str = "value") -> Any:
    """Unpickle verified bytes.

    Raises:
        SerializationError: the bytes do not unpickle here (e.g. a module is missing).
    """
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle {what}: {type(exc).__name__}: {exc}") from exc


# Buffers at least this large (numpy arrays, bytes-like objects that support pickle protocol
# 5) travel out of band: beside the pickle stream, never copied into it.
OOB_MIN_BYTES = 1 << 20


@dataclass
class Pickled:
    """A value pickled with protocol 5: the stream, and the large buffers it refers to in order."""

    stream: bytes
    buffers: list[memoryview]

    @property
    def oob_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)


def dumps_oob(obj: Any, what: str = "", min_bytes: int = OOB_MIN_BYTES) -> Pickled:
    """Pickle ``obj`` with its large contiguous buffers left out of the stream.

    Raises:
        SerializationError: as ``dumps``.
    """
    buffers: list[memoryview] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < min_bytes:
            return True  # in band
        buffers.append(view)
        return False

    try:
        stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_large)
    except Exception as exc:
        label = what or describe(obj)
        raise SerializationError(f"cannot pickle {label}: {type(exc).__name__}: {exc}") from exc
    return Pickled(cast(bytes, stream), buffers)


def loads_oob(stream: bytes, buffers: list[Any], what: str = "value") -> Any:
    """Unpickle a verified stream with its out-of-band buffers (writable ones give writable
    arrays)."""
    try:
        return pickle.loads(stream, buffers=buffers)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle {what}: {type(exc).__name__}: {exc}") from exc
