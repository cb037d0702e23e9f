"""Per-task metadata, kept by the client for the tasks whose results it holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from ..task import RESULT_FIELDS


class Metadata(dict[str, Any]):
    """Per-task metadata (seed 004): dict with attribute access to a fixed set of keys."""

    # The result fields of the record schema (``enginefarm.task``), less the sealed value.
    KEYS = tuple(name for name in RESULT_FIELDS if name != "result")
    _KEYSET = frozenset(KEYS)

    def __init__(self, **values: Any) -> None:
        unknown = values.keys() - self._KEYSET
        if unknown:
            raise KeyError(f"{sorted(unknown)[0]!r} is not a metadata key")
        super().__init__(dict.fromkeys(self.KEYS), **values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.KEYS:
            raise KeyError(f"{key!r} is not a metadata key")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


class MetadataStore(MutableMapping[str, Metadata]):
    """Task id -> Metadata, built from a finished task's record only when first read (most
    results are collected without anyone looking at their metadata)."""

    def __init__(self, build: Callable[[Any], Metadata]) -> None:
        self._build = build
        self._data: dict[str, Any] = {}

    def put_record(self, task_id: str, record: Any) -> None:
        self._data[task_id] = record

    def __getitem__(self, task_id: str) -> Metadata:
        value = self._data[task_id]
        if not isinstance(value, Metadata):
            value = self._data[task_id] = self._build(value)
        return value

    def __setitem__(self, task_id: str, value: Metadata) -> None:
        self._data[task_id] = value

    def __delitem__(self, task_id: str) -> None:
        del self._data[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
