"""Entries of a client's inbox: a task id, or a finished record packed by the store's script."""

from __future__ import annotations

import pytest

from enginefarm.errors import StoreError
from enginefarm.store.records import RESULT_FIELDS, inbox_entry


def pack(values: dict[str, bytes]) -> bytes:
    parts = [b"\0"]
    for name in RESULT_FIELDS:
        value = values.get(name)
        parts.append(b"-" if value is None else str(len(value)).encode() + b":" + value)
    return b"".join(parts)


def test_a_plain_task_id_comes_without_a_record():
    assert inbox_entry(b"abc123") == ("abc123", None)


def test_a_packed_record_is_decoded_with_binary_values_intact():
    result = b"EF1\x00:\x00-5:x\xff"  # separators and non-UTF-8 bytes inside a value
    task_id, record = inbox_entry(pack({"task_id": b"t1", "status": b"completed", "engine_id": b"3",
                                        "attempts": b"2", "stdout": b"", "result": result}))
    assert task_id == "t1" and record is not None
    assert (record.status, record.engine_id, record.attempts, record.stdout) == ("completed", 3, 2, "")
    assert record.result == result and record.error is None and record.done


@pytest.mark.parametrize("raw", [b"\0" + b"-" * len(RESULT_FIELDS),  # no task id
                                 b"\x002:t1",  # cut short
                                 b"\0x:t1"])  # not a length
def test_a_malformed_entry_is_a_store_error(raw):
    with pytest.raises(StoreError, match="malformed inbox entry"):
        inbox_entry(raw)
