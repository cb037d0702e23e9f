"""Pickling of user objects. The only module that imports cloudpickle.

``loads`` must only ever see bytes whose signature was verified (see protocol).
"""

from __future__ import annotations

import pickle
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
