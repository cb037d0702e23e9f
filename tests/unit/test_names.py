"""Redis key names: every key of one cluster hashes to one Redis Cluster slot (so scripts and
multi-key commands work on a sharded Redis), and no two clusters share or match a key."""

from __future__ import annotations

import binascii
import fnmatch
import inspect
import itertools

import pytest
from redis.crc import key_slot

from enginefarm.names import Names

# Names of RabbitMQ objects; every other public member of Names is a Redis key (or the glob
# and tag that go with them).
AMQP = {"direct_exchange", "tasks_queue", "work_queue", "dead_exchange", "dead_queue", "engine_queue",
        "engine_routing_key", "control_queue", "control_routing_key", "fixed_queues", "exchanges"}
# Sample arguments by parameter name, including the empty ids that build key prefixes.
SAMPLES: dict[str, list[object]] = {
    "engine_id": [0, 17, ""],
    "task_id": ["3f2a9c", ""],
    "stream": ["stdout", "stderr"],
    "status": ["pending", "completed", ""],
    "client_id": ["client-1"],
    "name": ["failures"],
    "parts": [("anything", 1)],
    "blob_id": ["9" * 32, "*"],
    "part": [0, 1023, "*"],
}


def redis_keys(names: Names) -> list[str]:
    """What every Redis member of ``names`` builds, with each sample argument."""
    keys = []
    for member, value in inspect.getmembers(Names):
        if member.startswith("_") or member in AMQP or member == "cluster":
            continue
        if isinstance(value, property):
            keys.append(getattr(names, member))
            continue
        params = [p for p in inspect.signature(value).parameters.values() if p.name != "self"]
        for param in params:
            assert param.name in SAMPLES, f"add sample values for Names.{member}({param.name})"
        for combination in itertools.product(*(SAMPLES[p.name] for p in params)):
            args: list[object] = []
            for param, sample in zip(params, combination):
                args.extend(sample if param.kind is param.VAR_POSITIONAL else [sample])
            keys.append(getattr(names, member)(*args))
    return keys


def test_the_samples_reach_keys_prefixes_and_the_pattern():
    keys = redis_keys(Names("c"))
    assert {"{c}:engines", "{c}:task:3f2a9c", "{c}:task:", "{c}:output:stdout:", "{c}:engine:17:claimed",
            "{c}:idx:status:", "{c}:client:client-1:inbox", "{c}:anything:1", "{c}:*", "{c}"} <= set(keys)


@pytest.mark.parametrize("cluster", ["c", "default", "prod-eu_1", "x" * 64])
def test_every_key_of_a_cluster_hashes_to_one_slot(cluster):
    names = Names(cluster)
    keys = redis_keys(names)
    assert len(keys) > 30
    # redis-py's slot of each key, and CRC16 (XMODEM) of the tag's content computed here
    own = binascii.crc_hqx(cluster.encode(), 0) % 16384
    assert {key_slot(k.encode()) for k in keys} == {own}
    assert all(k.startswith("{" + cluster + "}") for k in keys)


def test_keys_match_their_own_cluster_pattern_only():
    # Names chosen to be prefixes of one another: a glob of one must not reach the others
    clusters = ["a", "ab", "a-b", "b"]
    keys = {c: [k for k in redis_keys(Names(c)) if k != Names(c).hash_tag and k != Names(c).pattern]
            for c in clusters}
    for c in clusters:
        others = {k for o in clusters if o != c for k in keys[o]}
        assert not set(keys[c]) & others
        pattern = Names(c).pattern
        # Redis's glob and fnmatch agree here: cluster names hold no '*', '?', '[' or '\'
        assert all(fnmatch.fnmatchcase(k, pattern) for k in keys[c])
        assert not any(fnmatch.fnmatchcase(k, pattern) for k in others)
