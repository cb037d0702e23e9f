"""Payloads whose large buffers travel out of band, through the store, beside a small stream.

A packed payload is ``MAGIC | refs length (4, big endian) | refs (JSON) | pickle stream``.
It always travels inside a signed envelope (a request or a sealed result), so the references,
and the SHA-256 digest of each buffer in them, are as authentic as the stream: a buffer read
back from the store is used only if it hashes to its signed digest.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from .errors import SignatureError

MAGIC = b"EFB5"
# Buffers are stored in parts of this size: Redis moves 1 MiB values several times faster
# than very large ones, and no single command holds it for long.
PART_BYTES = 1 << 20
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BufferRef:
    """One stored buffer: its id (which names its parts), its size and its SHA-256."""

    blob_id: str
    size: int
    digest: str

    @property
    def parts(self) -> int:
        return max(1, -(-self.size // PART_BYTES))

    def encode(self) -> list[Any]:
        return [self.blob_id, self.size, self.digest]

    @classmethod
    def decode(cls, item: Any) -> BufferRef:
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                or not _HEX_ID.fullmatch(item[0]) or type(item[1]) is not int or item[1] < 0
                or not isinstance(item[2], str) or not _HEX_DIGEST.fullmatch(item[2])):
            raise SignatureError("malformed", f"bad buffer reference {str(item)[:80]!r}")
        return cls(item[0], item[1], item[2])


def is_packed(payload: bytes | memoryview) -> bool:
    return bytes(payload[:4]) == MAGIC


def pack(refs: list[BufferRef], stream: bytes) -> bytes:
    head = json.dumps([r.encode() for r in refs], separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + stream


def unpack(payload: bytes) -> tuple[list[BufferRef], bytes]:
    """The references and the stream of a packed payload (one that ``is_packed``).

    Raises:
        SignatureError: reason ``malformed`` (only a key holder can sign one, but a bug must
            still not crash the reader).
    """
    try:
        (size,) = struct.unpack(">I", payload[4:8])
        refs = json.loads(payload[8 : 8 + size])
    except (struct.error, ValueError, RecursionError):
        raise SignatureError("malformed", "bad out-of-band buffer references") from None
    if not isinstance(refs, list):
        raise SignatureError("malformed", "out-of-band buffer references are not a list")
    return [BufferRef.decode(item) for item in refs], payload[8 + size :]


def total_size(refs: list[BufferRef]) -> int:
    return sum(r.size for r in refs)
