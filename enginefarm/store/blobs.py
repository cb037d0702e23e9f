"""Out-of-band buffers of requests and results, stored in parts beside the records.

A buffer is written in full before the payload that names it is signed and sent, so no
reader ever meets a half-written value; a writer that fails part-way removes what it wrote,
and every part carries a TTL, so one that dies part-way leaves nothing behind for long.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any, Protocol, cast

import redis

from ..buffers import PART_BYTES, BufferRef
from ..errors import DataExpired, PayloadTooLarge, SignatureError
from ..names import Names
from .connection import UNAVAILABLE, ReplicaWait, translate_errors
from .sharded import pool_for

# Parts sent or read per round trip: enough to keep the socket busy, few enough to bound
# what a reader holds beyond the buffer it fills.
_PARTS_PER_TRIP = 16


class _RawConnection(Protocol):
    """What ``_set_parts`` uses of a pooled redis-py connection (whose methods are untyped)."""

    def send_packed_command(self, command: list[bytes | memoryview], check_health: bool = True) -> None: ...

    def read_response(self) -> Any: ...

    def disconnect(self) -> None: ...


class BlobStore:
    def __init__(self, client: redis.Redis, names: Names, ttl_s: int, cap_bytes: int,
                 replicas: ReplicaWait | None = None) -> None:
        self.client = client
        self.names = names
        self.ttl_s = max(1, int(ttl_s))
        self.cap_bytes = cap_bytes
        # Behind Sentinel, parts are on a replica before the payload naming them is sent, as
        # records are: a failover must not keep a request whose buffers it lost.
        self.replicas = replicas if replicas is not None and replicas.replicas > 0 else None

    def check(self, buffers: Sequence[memoryview], what: str) -> None:
        """Raises: PayloadTooLarge when the buffers exceed the cluster's cap (max_value_bytes)."""
        total = sum(b.nbytes for b in buffers)
        if total > self.cap_bytes:
            raise PayloadTooLarge(f"{what} holds {total:,} bytes of buffers, over the cluster's cap of "
                                  f"{self.cap_bytes:,} bytes (max_value_bytes)")

    def put(self, buffers: Sequence[memoryview], what: str = "the value") -> list[BufferRef]:
        """Store each buffer; returns their references, in order.

        Raises:
            PayloadTooLarge: over the cap (nothing is written).
            StoreError: Redis failed; what was written is removed (best effort).
        """
        self.check(buffers, what)
        refs: list[BufferRef] = []
        written: list[str] = []
        try:
            with translate_errors():
                for buffer in buffers:
                    refs.append(self._put_one(buffer.cast("B") if buffer.format != "B" else buffer, written))
        except BaseException:
            self._forget(written)
            raise
        return refs

    def _put_one(self, view: memoryview, written: list[str]) -> BufferRef:
        blob_id = uuid.uuid4().hex
        size = view.nbytes
        ref = BufferRef(blob_id, size, hashlib.sha256(view).hexdigest())
        for first in range(0, ref.parts, _PARTS_PER_TRIP):
            items = [(self.names.blob_part(blob_id, part), view[part * PART_BYTES : (part + 1) * PART_BYTES])
                     for part in range(first, min(first + _PARTS_PER_TRIP, ref.parts))]
            written.extend(key for key, _ in items)
            self._set_parts(items)
        return ref

    def _set_parts(self, items: list[tuple[str, memoryview]]) -> None:
        """SET each part with the TTL, in one round trip. The parts go to the socket as they
        are: redis-py's command packer would copy each (a third of the time of a write)."""
        ttl = str(self.ttl_s).encode()
        chunks: list[bytes | memoryview] = []
        for key, part in items:
            name = key.encode()
            chunks += [b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(name), name, part.nbytes), part,
                       b"\r\n$2\r\nEX\r\n$%d\r\n%s\r\n" % (len(ttl), ttl)]
        if self.replicas is not None:
            wait = [str(arg).encode() for arg in self.replicas.command()]
            chunks.append(b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in wait))
        pool = pool_for(self.client, items[0][0])
        conn = cast(_RawConnection, pool.get_connection())
        try:
            conn.send_packed_command(chunks, check_health=False)
            for _ in items:
                conn.read_response()
            if self.replicas is not None:
                self.replicas.check(conn.read_response())
        except BaseException as exc:
            # Replies may be left unread on it: this connection cannot be used again.
            conn.disconnect()
            if not isinstance(exc, UNAVAILABLE):
                raise
            # The ordinary path retries through a reconnect (a Redis restart, a failover).
            pipe = self.client.pipeline(transaction=False)
            for key, part in items:
                pipe.set(key, bytes(part), ex=self.ttl_s)
            if self.replicas is not None:
                cast(Any, pipe).execute_command(*self.replicas.command())
            replies = pipe.execute()
            if self.replicas is not None:
                self.replicas.check(replies[-1])
        finally:
            pool.release(cast(Any, conn))

    def _forget(self, keys: list[str]) -> None:
        try:
            for first in range(0, len(keys), 512):
                self.client.delete(*keys[first : first + 512])
        except redis.exceptions.RedisError:
            pass  # their TTL removes them

    def fetch(self, refs: Sequence[BufferRef], what: str = "the value") -> list[bytearray]:
        """Read each buffer into a fresh writable buffer, checking it against its digest.

        Raises:
            DataExpired: a part is gone (its TTL passed, or it was purged).
            SignatureError: a buffer does not match its signed digest (reason ``bad-signature``).
            StoreError: Redis failed.
        """
        out = []
        for ref in refs:
            buffer = bytearray(ref.size)
            self._read(ref, what, buffer)
            out.append(buffer)
        return out

    def fetch_parts(self, refs: Sequence[BufferRef], what: str = "the value") -> list[list[bytes]]:
        """Each buffer as its stored parts, checked as ``fetch`` does, for a reader that only
        passes them on (no copy into one buffer)."""
        out = []
        for ref in refs:
            parts: list[bytes] = []
            self._read(ref, what, parts)
            out.append(parts)
        return out

    def _read(self, ref: BufferRef, what: str, into: bytearray | list[bytes]) -> None:
        hasher = hashlib.sha256()
        with translate_errors():
            # One GET at a time: redis-py reads a pipeline of large replies several times
            # slower than the same replies one by one.
            for part in range(ref.parts):
                data = cast("bytes | None", self.client.get(self.names.blob_part(ref.blob_id, part)))
                start = part * PART_BYTES
                expected = min(PART_BYTES, ref.size - start)
                if data is None:
                    raise DataExpired(f"a buffer of {what} ({ref.size:,} bytes) is no longer stored: "
                                      "its parts outlived blob_ttl_s or were purged")
                if len(data) != expected:
                    raise SignatureError("bad-signature", f"a buffer of {what} does not match its signed size")
                hasher.update(data)
                if isinstance(into, list):
                    into.append(data)
                else:
                    into[start : start + expected] = data
        if hasher.hexdigest() != ref.digest:
            raise SignatureError("bad-signature", f"a buffer of {what} does not match its signed digest")

    def forget(self, refs: Sequence[BufferRef]) -> None:
        """Remove stored buffers (purge)."""
        self._forget([self.names.blob_part(r.blob_id, p) for r in refs for p in range(r.parts)])
