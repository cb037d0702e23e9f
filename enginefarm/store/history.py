"""The task history: queries (seed 004's db_query), purging, and keeping it bounded.

Indexes kept by ``records``: the history sorted set (by submission time), one set per status
and one per engine. A query on status, engine_id or a time range of ``submitted`` reads only
the matching records; other queries scan the history in batches, fetching only the fields
the query and the requested keys need.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import redis

from ..names import Names
from .connection import translate_errors
from .query import equal_values, matches, time_range, validate
from ..errors import DecodeError
from ..task import ALIASES, LISTED_FIELDS, STATUSES, TERMINAL, decode_field

BATCH = 500

# Remove finished records (never pending or running ones) and any live output left of them.
# ARGV: 1 task key prefix, 2 history key, 3 status index prefix, 4 engine index prefix, 5 only
# records completed before this time ('inf' for any), 6 and 7 the live stdout and stderr key
# prefixes, 8.. task ids. Returns how many were removed.
_PURGE = """
local n = 0
local before = tonumber(ARGV[5])
for i = 8, #ARGV do
  local tid = ARGV[i]
  local key = ARGV[1] .. tid
  local st = redis.call('HGET', key, 'status')
  if st == false then
    redis.call('ZREM', ARGV[2], tid)
    redis.call('DEL', ARGV[6] .. tid, ARGV[7] .. tid)
  elseif (st == 'completed' or st == 'failed' or st == 'aborted')
      and tonumber(redis.call('HGET', key, 'completed') or '0') < before then
    local engines = {}
    for _, f in ipairs({'engine_id', 'failed_on', 'lost_on', 'unmet'}) do
      local v = redis.call('HGET', key, f)
      if v then for e in string.gmatch(v, '[^,]+') do engines[e] = true end end
    end
    for e, _ in pairs(engines) do redis.call('SREM', ARGV[4] .. e, tid) end
    redis.call('DEL', key, ARGV[6] .. tid, ARGV[7] .. tid)
    redis.call('ZREM', ARGV[2], tid)
    redis.call('SREM', ARGV[3] .. st, tid)
    n = n + 1
  end
end
return n
"""


def _decode_row(fields: list[str], values: list[bytes | None]) -> dict[str, Any]:
    """A record's fields, typed; one that does not decode is left out, and the row's
    ``invalid`` says which (a reader sees the rest of the record, not a traceback)."""
    row: dict[str, Any] = {}
    problems = []
    for name, value in zip(fields, values):
        try:
            row[name] = decode_field(name, value)
        except DecodeError as exc:
            row[name] = None
            problems.append(str(exc))
    if problems:
        row["invalid"] = "; ".join(problems)
    return row


def _shaped(row: dict[str, Any], asked: list[str]) -> dict[str, Any]:
    """The fields asked for (under the name asked: ``msg_id`` too), the task id, and what did
    not decode."""
    out = {"task_id": row["task_id"]}
    for name in [*asked, "invalid"]:
        source = ALIASES.get(name, name)
        if source in row:
            out[name] = row[source]
    return out


class History:
    def __init__(self, redis_client: redis.Redis, names: Names) -> None:
        self.redis = redis_client
        self.names = names
        self._purge = redis_client.register_script(_PURGE)

    # --- reading --------------------------------------------------------------------
    def task_ids(self) -> list[str]:
        """Every task id in submission order, across clients (the hub history)."""
        with translate_errors():
            return [t.decode() for t in cast("list[bytes]", self.redis.zrange(self.names.history, 0, -1))]

    def size(self) -> int:
        with translate_errors():
            return int(self.redis.zcard(self.names.history))

    def fetch(self, task_ids: list[str], fields: Iterable[str]) -> list[dict[str, Any] | None]:
        """Chosen fields of each record, typed; None for a record that does not exist."""
        wanted = list(dict.fromkeys(["task_id", "status", *fields]))
        output = [f for f in ("stdout", "stderr") if f in wanted]
        # Engines leave empty output out of a record: a finished task that started printed nothing.
        fields = wanted + ["started"] if output and "started" not in wanted else wanted
        out: list[dict[str, Any] | None] = []
        with translate_errors():
            for start in range(0, len(task_ids), BATCH):
                pipe = self.redis.pipeline(transaction=False)
                for task_id in task_ids[start : start + BATCH]:
                    pipe.hmget(self.names.task(task_id), fields)
                for values in pipe.execute():
                    if values[1] is None:  # no status: no record
                        out.append(None)
                        continue
                    row = _decode_row(fields, values)
                    if row["status"] in TERMINAL and row.get("started") is not None:
                        row.update({f: "" for f in output if row[f] is None})
                    out.append({k: v for k, v in row.items() if v is not None and (k in wanted or k == "invalid")})
        return out

    def _candidates(self, query: Mapping[str, Any]) -> list[str] | None:
        """Task ids the indexes allow, oldest first; None when no index applies."""
        sets: list[set[str]] = []
        with translate_errors():
            statuses = equal_values(query["status"]) if "status" in query else None
            if statuses is not None:
                keys = [self.names.status_index(s) for s in statuses if s in STATUSES]
                sets.append({t.decode() for t in cast("set[bytes]", self.redis.sunion(keys))} if keys else set())
            engines = equal_values(query["engine_id"]) if "engine_id" in query else None
            if engines is not None:
                keys = [self.names.engine_index(e) for e in engines if isinstance(e, int)]
                sets.append({t.decode() for t in cast("set[bytes]", self.redis.sunion(keys))} if keys else set())
            bounds = time_range(query["submitted"]) if "submitted" in query else None
            if bounds is not None:
                low, high = bounds
                ids = cast("list[bytes]", self.redis.zrangebyscore(self.names.history, low, high))
                sets.append({t.decode() for t in ids})
            if not sets:
                return None
            chosen = set.intersection(*sets)
            scores = self._scores(chosen)
        return sorted(chosen, key=lambda t: scores.get(t, 0.0))

    def _scores(self, task_ids: set[str]) -> dict[str, float]:
        ids = list(task_ids)
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.zscore(self.names.history, task_id)
        return {t: (s or 0.0) for t, s in zip(ids, pipe.execute())}

    def _scan(self) -> Iterator[list[str]]:
        start = 0
        while True:
            with translate_errors():
                batch = [t.decode() for t in
                         cast("list[bytes]", self.redis.zrange(self.names.history, start, start + BATCH - 1))]
            if not batch:
                return
            yield batch
            start += BATCH

    def query(self, query: Mapping[str, Any], keys: Iterable[str] | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
        """Records matching ``query``, oldest first, with the fields in ``keys`` (default: all
        but the sealed request and result).

        Raises:
            QueryError: the query is malformed.
        """
        query = validate(query)
        if limit is not None and limit <= 0:
            return []
        asked = list(keys) if keys is not None else list(LISTED_FIELDS)
        wanted = [ALIASES.get(k, k) for k in asked]
        needed = list(dict.fromkeys([*wanted, *query]))
        candidates = self._candidates(query)
        batches = (
            (candidates[i : i + BATCH] for i in range(0, len(candidates), BATCH))
            if candidates is not None else self._scan()
        )
        found: list[dict[str, Any]] = []
        for batch in batches:
            for row in self.fetch(batch, needed):
                if row is not None and matches(row, query):
                    found.append(_shaped(row, asked))
                    if limit is not None and len(found) >= limit:
                        return found
        return found

    def memory_estimate(self, sample: int = 20) -> tuple[int, int]:
        """(records, estimated bytes): MEMORY USAGE of a sample of records, scaled up."""
        with translate_errors():
            count = int(self.redis.zcard(self.names.history))
            if count == 0:
                return 0, 0
            # With a count, ZRANDMEMBER gives a list of members.
            members = cast("list[bytes]", self.redis.zrandmember(self.names.history, min(sample, count)))
            ids = [t.decode() for t in members]
            pipe = self.redis.pipeline(transaction=False)
            for task_id in ids:
                pipe.memory_usage(self.names.task(task_id), samples=0)
            sizes = [int(v or 0) for v in pipe.execute()]
        return count, int(sum(sizes) / max(len(sizes), 1) * count)

    def engine_tasks(self, engine_id: int, verbose: bool = False) -> dict[str, Any]:
        """Per status, how many (or, verbose, which) tasks this engine ran or holds."""
        n = self.names
        with translate_errors():
            if verbose:
                # One call per status: a Redis Cluster client pipelines no SINTER.
                members = [cast("set[bytes]", self.redis.sinter([n.engine_index(engine_id), n.status_index(s)]))
                           for s in STATUSES]
                return {s.value: sorted(t.decode() for t in v) for s, v in zip(STATUSES, members)}
            pipe = self.redis.pipeline(transaction=False)
            for status in STATUSES:
                pipe.sintercard(2, [n.engine_index(engine_id), n.status_index(status)])
            values = pipe.execute()
        return {s.value: int(v) for s, v in zip(STATUSES, values)}

    # --- removing -------------------------------------------------------------------
    def purge(self, task_ids: Iterable[str], completed_before: float = float("inf")) -> int:
        """Remove finished records among ``task_ids``; returns how many were removed."""
        ids = list(task_ids)
        removed = 0
        n = self.names
        for start in range(0, len(ids), BATCH):
            args = [n.task(""), n.history, n.status_index(""), n.engine_index(""),
                    "inf" if completed_before == float("inf") else repr(completed_before),
                    n.task_output("", "stdout"), n.task_output("", "stderr"), *ids[start : start + BATCH]]
            with translate_errors():
                # The history key routes the call (to the shard of the cluster's keys).
                removed += int(self._purge(keys=[n.history], args=args))
        return removed

    def purge_all(self) -> int:
        return sum(self.purge(batch) for batch in list(self._scan()))

    def purge_engine(self, engine_id: int) -> int:
        with translate_errors():
            ids = [t.decode() for t in cast("set[bytes]", self.redis.smembers(self.names.engine_index(engine_id)))]
        return self.purge(ids)

    def cull(self, ttl_s: float, max_records: int, interval_s: float = 1.0) -> int:
        """Keep the history bounded: drop finished records past their time to live, then the
        oldest finished ones beyond ``max_records``. Runs at most once per ``interval_s``
        across the cluster (the cap is overshot by at most what the cluster finishes in that
        time plus a heartbeat); returns how many were removed.
        """
        with translate_errors():
            if not self.redis.set(self.names.cull_lock, "1", nx=True, px=int(interval_s * 1000)):
                return 0
            expired = [t.decode() for t in
                       cast("list[bytes]", self.redis.zrangebyscore(self.names.history, "-inf", time.time() - ttl_s))]
        removed = self.purge(expired, completed_before=time.time() - ttl_s) if expired else 0
        with translate_errors():
            excess = int(self.redis.zcard(self.names.history)) - max_records
        # Oldest first, skipping tasks still in flight, until the excess is gone.
        start = 0
        while excess > 0:
            with translate_errors():
                batch = [t.decode() for t in
                         cast("list[bytes]", self.redis.zrange(self.names.history, start, start + BATCH - 1))]
            if not batch:
                break
            rows = self.fetch(batch, [])
            finished = [row["task_id"] for row in rows if row is not None and row.get("status") in TERMINAL]
            gone = self.purge(finished[:excess]) if finished else 0
            removed += gone
            excess -= gone
            start += len(batch) - gone
        return removed
