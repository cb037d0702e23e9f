"""Which of this client's tasks still need the out-of-band buffers their requests name.

A request's buffers are removed from the store once every task that names them has
finished: a push of one array to many engines stores it once and frees it when the last
engine is done with it. (A re-run after an engine dies happens before its task finishes, so
it still finds them; a later resubmit fails with DataExpired.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..buffers import BufferRef, is_packed, unpack


class BlobOwners:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, list[BufferRef]] = {}  # task id -> the buffers it names
        self._holders: dict[str, set[str]] = {}  # blob id -> unfinished tasks naming it

    def hold(self, task_id: str, payload: bytes) -> None:
        if not is_packed(payload):
            return
        refs = unpack(payload)[0]
        with self._lock:
            self._refs[task_id] = refs
            for ref in refs:
                self._holders.setdefault(ref.blob_id, set()).add(task_id)

    def release(self, task_ids: Iterable[str]) -> list[BufferRef]:
        """The buffers no unfinished task names any more, once these tasks finished."""
        freed: list[BufferRef] = []
        if not self._refs:
            return freed
        with self._lock:
            for task_id in task_ids:
                for ref in self._refs.pop(task_id, ()):
                    holders = self._holders.get(ref.blob_id)
                    if holders is None:
                        continue
                    holders.discard(task_id)
                    if not holders:
                        del self._holders[ref.blob_id]
                        freed.append(ref)
        return freed
