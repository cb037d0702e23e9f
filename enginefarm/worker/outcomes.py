"""What an engine makes of a task's outcome: hand it back for another try, or the record
fields of its final status."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ..buffers import pack
from ..config import Settings
from ..metrics import Metrics
from ..schedulers import retry
from ..store.blobs import BlobStore
from ..store.records import COMPLETED, FAILED, Records
from ..store.registry import Registry
from ..task import TaskHeader
from .executor import Outcome
from .output import OutputRelay


class Outcomes:
    """Turns one engine's task outcomes into a hand-back or a final record."""

    def __init__(self, engine_id: int, settings: Settings, records: Records, registry: Registry, blobs: BlobStore,
                 live: OutputRelay, metrics: Metrics, retry_store: Callable[[Callable[[], Any]], Any]) -> None:
        self.engine_id = engine_id
        self.settings = settings
        self.records = records
        self.registry = registry
        self.blobs = blobs
        self.live = live
        self.metrics = metrics
        # Redis writes that must land (the engine's retry loop).
        self.retry_store = retry_store

    def hand_back(self, task_id: str, header: TaskHeader, attempt: int, outcome: Outcome) -> bool:
        """Give a load-balanced task back to the scheduler when the retry policy says to run
        it again. Returns False when the outcome is final and must be recorded."""
        if outcome.ok:
            return False
        ename = str((outcome.error or {}).get("ename", ""))
        losses = 0
        if ename in retry.LOST_ERRORS:
            record = self.records.get(task_id)
            # A record that does not decode cannot say how often it was lost: give up on it.
            losses = len(record.lost_on) if record is not None and not record.invalid else self.settings.max_engine_losses
        untried = self.untried(task_id, header) if outcome.unmet and retry.counts_refusals(ename, header.depend) else None
        decision = retry.after_outcome(header.lb, outcome.ok, outcome.unmet, ename, attempt, header.retries,
                                       losses, self.settings.max_engine_losses, untried)
        if not decision.requeue:
            if decision.note and outcome.error is not None:
                outcome.error["evalue"] = str(outcome.error.get("evalue", "")) + decision.note
            if decision.ename and outcome.error is not None:
                outcome.error["ename"] = decision.ename
            return False
        fields: dict[str, Any] = {}
        if not outcome.unmet:
            error = {**(outcome.error or {}), "engine_id": self.engine_id}
            fields = {"last_error": json.dumps(error), "failed_at": repr(time.time())}
        self.metrics.retries.labels(decision.reason).inc()
        self.live.discard(task_id)
        return self.records.requeue(task_id, self.engine_id, decision.listed_as, decision.attempts_delta, fields)

    def untried(self, task_id: str, header: TaskHeader) -> int:
        """Live engines the task may run on (its targets), other than this one, that have not
        refused it (its record's unmet list); a record that does not decode counts nobody as
        having refused."""
        record = self.records.get(task_id)
        refused = set(record.unmet) if record is not None and not record.invalid else set()
        allowed = set(self.registry.live_ids())
        if header.targets is not None:
            allowed &= set(header.targets)
        return len(allowed - refused - {self.engine_id})

    def fields(self, task_id: str, outcome: Outcome) -> tuple[str, dict[str, Any]]:
        """The final status and the record fields of an outcome."""
        cap = self.settings.max_message_bytes
        if outcome.ok and len(outcome.value or b"") > cap:
            outcome.ok = False
            outcome.error = {"ename": "ResultTooLarge", "traceback": "",
                             "evalue": f"the result is {len(outcome.value or b''):,} bytes pickled, over the "
                                       f"cluster's cap of {cap:,} bytes (max_message_bytes)"}
            outcome.value = None
        # Empty output is left out: two fewer fields in every quiet task's record.
        fields: dict[str, Any] = {k: v for k, v in (("stdout", outcome.stdout), ("stderr", outcome.stderr)) if v}
        if outcome.outputs:
            fields["outputs"] = json.dumps(outcome.outputs)
        if outcome.execute_result is not None:
            fields["execute_result"] = json.dumps(outcome.execute_result)
        if outcome.ok:
            fields["summary"] = outcome.summary
            fields["result"] = self.records.seal_value(task_id, "result", self.stored_value(outcome))
        else:
            fields["error"] = json.dumps({**(outcome.error or {}), "engine_id": self.engine_id})
        if outcome.namespace_lost:
            fields["namespace_lost"] = "1"
        return (COMPLETED if outcome.ok else FAILED), fields

    def stored_value(self, outcome: Outcome) -> bytes:
        """The result's payload: its out-of-band buffers are stored first, and it names them."""
        if not outcome.buffers:
            return outcome.value or b""
        views = [memoryview(b) for b in outcome.buffers]
        refs = self.retry_store(lambda: self.blobs.put(views, "the result"))
        outcome.buffers = None
        return pack(refs, outcome.value or b"")
