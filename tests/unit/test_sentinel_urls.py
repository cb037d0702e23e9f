"""redis+sentinel:// URLs: what they say, what is refused, and that passwords never show."""

from __future__ import annotations

import pytest

from enginefarm.config import ConfigError, SentinelURL, Settings, parse_sentinel_url
from enginefarm.store.connection import ReplicaWait, redact
from enginefarm.errors import ReplicationError, StoreError


@pytest.mark.parametrize("url, parsed", [
    ("redis+sentinel://s1:26379,s2:26380,s3:26381/mymaster",
     SentinelURL((("s1", 26379), ("s2", 26380), ("s3", 26381)), "mymaster")),
    ("redis+sentinel://:se%40cret@s1,[::1]:5000/ef/3",
     SentinelURL((("s1", 26379), ("::1", 5000)), "ef", 3, None, "se@cret")),
    ("redis+sentinel://enginefarm:pw@10.0.0.1:26379/ef/", SentinelURL((("10.0.0.1", 26379),), "ef", 0, "enginefarm", "pw")),
    ("REDIS+SENTINEL://s1/ef", SentinelURL((("s1", 26379),), "ef")),
])
def test_a_sentinel_url_names_sentinels_service_database_and_credentials(url, parsed):
    assert parse_sentinel_url(url) == parsed
    assert Settings.load(env={"ENGINEFARM_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://s1:26379/", "names no service"),
    ("redis+sentinel://s1:26379", "names no service"),
    ("redis+sentinel://:hunter2@s1:x/ef", "invalid port 'x' for sentinel 1"),
    ("redis+sentinel://:hunter2@s1,s2:99999/ef", "invalid port '99999' for sentinel 2"),
    ("redis+sentinel://:hunter2@s1,,s3/ef", "names no host for sentinel 2"),
    ("redis+sentinel://:hunter2@[::1/ef", "sentinel 1 that is not host:port"),
    ("redis+sentinel://:hunter2@s1/ef/zero", "database that is not a number"),
    ("redis+sentinel://:hunter2@s1/ef?password=hunter2", "no query"),
])
def test_a_bad_sentinel_url_is_one_config_error_without_the_password(url, says):
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"ENGINEFARM_REDIS_URL": url})
    message = str(info.value)
    assert message.startswith("ENGINEFARM_REDIS_URL (redis_url) ") and says in message, message
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize("url, shown", [
    ("redis+sentinel://:hunter2@s1:1,s2:2/ef/0", "redis+sentinel://***@s1:1,s2:2/ef/0"),
    ("redis+sentinel://user:hun@ter2@s1/ef", "redis+sentinel://***@s1/ef"),
    ("redis+sentinel://s1:1,s2:2/ef", "redis+sentinel://s1:1,s2:2/ef"),
    ("redis://:hunter2@h:6379/0", "redis://***@h:6379/0"),
    ("rediss://h:6379/0?password=hunter2&db=1", "rediss://h:6379/0?password=***&db=1"),
    ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
    ("hunter2@h", "***@h"),
])
def test_redact_hides_passwords_in_every_redis_url(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("env, expected", [
    ({"ENGINEFARM_REDIS_URL": "redis+sentinel://s1/ef"}, 1),
    ({"ENGINEFARM_REDIS_URL": "redis+sentinel://s1/ef", "ENGINEFARM_REDIS_MIN_REPLICAS": "0"}, 0),
    ({"ENGINEFARM_REDIS_URL": "redis+sentinel://s1/ef", "ENGINEFARM_REDIS_MIN_REPLICAS": "2"}, 2),
    ({}, 0),
    ({"ENGINEFARM_REDIS_MIN_REPLICAS": "1"}, 1),
])
def test_writes_wait_for_one_replica_behind_sentinel_unless_told(env, expected):
    assert Settings.load(env=env).min_replicas == expected


@pytest.mark.parametrize("overrides", [{"redis_min_replicas": -2}, {"redis_replica_timeout_s": 0.0}])
def test_replica_wait_settings_are_checked(overrides):
    with pytest.raises(ConfigError):
        Settings.load(env={}, **overrides)


def test_too_few_replicas_is_a_store_failure():
    wait = ReplicaWait(2, 0.5)
    assert wait.command() == ("WAIT", 2, 500)
    wait.check(2)
    wait.check(3)
    with pytest.raises(ReplicationError) as info:
        wait.check(1)
    assert isinstance(info.value, StoreError) and "1 of the 2 replicas" in str(info.value)
