"""The packed payload format and protocol-5 pickling of large buffers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from enginefarm.buffers import MAGIC, PART_BYTES, BufferRef, is_packed, pack, unpack
from enginefarm.errors import SignatureError
from enginefarm.serialization import OOB_MIN_BYTES, dumps_oob, loads_oob

REF = BufferRef("0" * 32, 3 * PART_BYTES + 1, "a" * 64)


def test_pack_round_trips_refs_and_stream():
    payload = pack([REF], b"stream")
    assert is_packed(payload) and not is_packed(b"\x80\x05plain pickle")
    assert unpack(payload) == ([REF], b"stream")
    assert REF.parts == 4 and BufferRef("1" * 32, 0, "b" * 64).parts == 1


@pytest.mark.parametrize("refs", [
    b"{}", b"[[1, 2, 3]]", b'[["' + b"0" * 32 + b'", -1, "' + b"a" * 64 + b'"]]',
    b'[["' + b"0" * 31 + b'", 1, "' + b"a" * 64 + b'"]]', b'[["' + b"0" * 32 + b'", 1, "zz"]]',
    b'[["' + b"0" * 32 + b'", true, "' + b"a" * 64 + b'"]]', b"not json",
])
def test_malformed_references_are_refused_clearly(refs):
    with pytest.raises(SignatureError) as refused:
        unpack(MAGIC + struct.pack(">I", len(refs)) + refs + b"s")
    assert refused.value.reason == "malformed"


def test_large_contiguous_buffers_leave_the_stream_and_small_ones_stay():
    big = np.arange(OOB_MIN_BYTES // 8 * 2, dtype=np.float64)
    small = np.arange(10)
    pickled = dumps_oob({"big": big, "small": small, "strided": big[::2]})
    assert [b.nbytes for b in pickled.buffers] == [big.nbytes]
    assert len(pickled.stream) < big.nbytes  # the strided copy is in band; big is not
    back = loads_oob(pickled.stream, [bytearray(b) for b in pickled.buffers])
    assert np.array_equal(back["big"], big) and back["big"].flags.writeable
    assert np.array_equal(back["strided"], big[::2]) and np.array_equal(back["small"], small)
    assert dumps_oob(b"x" * (2 * OOB_MIN_BYTES)).buffers == []  # bytes are immutable: in band
