"""The Mongo-style matcher behind db_query (enginefarm.store.query), as pure functions."""

from __future__ import annotations

import math

import pytest

from enginefarm.store.query import (
    MAX_QUERY_DEPTH,
    OPERATORS,
    QueryError,
    equal_values,
    field_matches,
    matches,
    time_range,
    validate,
)

# Three records whose numeric fields straddle the bound 10 used below: under, on, over.
UNDER = {"task_id": "a", "status": "completed", "submitted": 9.5, "attempts": 1, "engine_id": 0}
ON = {"task_id": "b", "status": "failed", "submitted": 10.0, "attempts": 2, "engine_id": 1,
      "error": {"ename": "ValueError", "evalue": "boom", "traceback": ""}}
OVER = {"task_id": "c", "status": "pending", "submitted": 10.5, "attempts": 0}
MISSING = {"task_id": "d", "status": "pending"}  # no submitted, attempts or engine_id at all
ALL = [UNDER, ON, OVER, MISSING]


def ids(query: dict) -> list[str]:
    return [r["task_id"] for r in ALL if matches(r, validate(query))]


# --- equality -------------------------------------------------------------------------------
def test_equality_matches_equal_values_only():
    assert ids({"status": "pending"}) == ["c", "d"]
    assert ids({"engine_id": 0}) == ["a"]
    assert ids({"submitted": 10.0}) == ["b"]
    assert ids({"status": "running"}) == []


def test_equality_never_matches_a_missing_field_even_for_none():
    assert ids({"engine_id": None}) == []
    assert field_matches({"x": None}, "x", None) is False


def test_equality_with_a_plain_dict_compares_the_whole_value():
    # A dict whose keys are not operators is a value to compare with, not a condition.
    assert ids({"error": {"ename": "ValueError", "evalue": "boom", "traceback": ""}}) == ["b"]
    assert ids({"error": {"ename": "ValueError"}}) == []
    # An empty dict is a value too (not an empty condition that matches everything).
    assert ids({"error": {}}) == []


def test_empty_query_matches_everything():
    assert ids({}) == ["a", "b", "c", "d"]


# --- one test per operator, values straddling the bound -----------------------------------
def test_gt_is_strictly_greater():
    assert ids({"submitted": {"$gt": 10.0}}) == ["c"]
    assert ids({"submitted": {"$gt": 9.99}}) == ["b", "c"]
    assert ids({"attempts": {"$gt": 1}}) == ["b"]


def test_lt_is_strictly_less():
    assert ids({"submitted": {"$lt": 10.0}}) == ["a"]
    assert ids({"submitted": {"$lt": 10.01}}) == ["a", "b"]
    assert ids({"attempts": {"$lt": 1}}) == ["c"]


def test_gte_includes_the_bound():
    assert ids({"submitted": {"$gte": 10.0}}) == ["b", "c"]
    assert ids({"submitted": {"$gte": 10.01}}) == ["c"]
    assert ids({"attempts": {"$gte": 1}}) == ["a", "b"]


def test_lte_includes_the_bound():
    assert ids({"submitted": {"$lte": 10.0}}) == ["a", "b"]
    assert ids({"submitted": {"$lte": 9.99}}) == ["a"]
    assert ids({"attempts": {"$lte": 1}}) == ["a", "c"]


def test_comparisons_never_match_missing_or_incomparable_values():
    for op in ("$lt", "$gt", "$lte", "$gte"):
        assert field_matches(MISSING, "submitted", {op: 10}) is False
        assert field_matches({"submitted": None}, "submitted", {op: 10}) is False
        # str vs int raises TypeError in Python: no match instead of an exception.
        assert field_matches({"submitted": "late"}, "submitted", {op: 10}) is False


def test_ne_matches_other_values_and_missing_fields():
    assert ids({"status": {"$ne": "pending"}}) == ["a", "b"]
    # Mongo semantics: a record without the field is "not equal".
    assert ids({"engine_id": {"$ne": 0}}) == ["b", "c", "d"]
    assert ids({"submitted": {"$ne": 10.0}}) == ["a", "c", "d"]


def test_in_matches_listed_values_of_present_fields():
    assert ids({"status": {"$in": ["completed", "failed"]}}) == ["a", "b"]
    assert ids({"engine_id": {"$in": [1, 7]}}) == ["b"]
    assert ids({"status": {"$in": []}}) == []
    # A missing field is not "in" a list, even one holding None.
    assert ids({"engine_id": {"$in": [None]}}) == []
    # Tuples are lists too.
    assert ids({"attempts": {"$in": (0, 2)}}) == ["b", "c"]


def test_nin_matches_unlisted_values_and_missing_fields():
    assert ids({"status": {"$nin": ["pending", "running"]}}) == ["a", "b"]
    assert ids({"engine_id": {"$nin": [0]}}) == ["b", "c", "d"]
    assert ids({"status": {"$nin": []}}) == ["a", "b", "c", "d"]


def test_exists_true_and_false():
    assert ids({"engine_id": {"$exists": True}}) == ["a", "b"]
    assert ids({"engine_id": {"$exists": False}}) == ["c", "d"]
    assert ids({"error": {"$exists": True}}) == ["b"]
    # A None value counts as absent.
    assert field_matches({"started": None}, "started", {"$exists": False}) is True
    assert field_matches({"started": None}, "started", {"$exists": True}) is False


# --- combinations ---------------------------------------------------------------------------
def test_several_operators_on_one_field_must_all_hold():
    assert ids({"submitted": {"$gt": 9.5, "$lt": 10.5}}) == ["b"]
    assert ids({"submitted": {"$gte": 9.5, "$lte": 10.5}}) == ["a", "b", "c"]
    assert ids({"submitted": {"$gte": 9.5, "$ne": 10.0}}) == ["a", "c"]
    assert ids({"submitted": {"$gt": 10.5, "$lt": 9.5}}) == []


def test_conditions_on_several_fields_must_all_hold():
    assert ids({"status": "pending", "submitted": {"$exists": True}}) == ["c"]
    assert ids({"status": {"$in": ["completed", "failed"]}, "attempts": {"$gte": 2}}) == ["b"]
    assert ids({"status": {"$ne": "failed"}, "engine_id": {"$exists": False},
                "submitted": {"$lt": 11}}) == ["c"]


# --- index helpers --------------------------------------------------------------------------
def test_equal_values_for_index_lookups():
    assert equal_values("completed") == ["completed"]
    assert equal_values(3) == [3]
    assert equal_values({"$in": ["a", "b"]}) == ["a", "b"]
    assert equal_values({"$in": ("a",)}) == ["a"]
    # Anything an index cannot answer exactly.
    assert equal_values({"$ne": "a"}) is None
    assert equal_values({"$nin": ["a"]}) is None
    assert equal_values({"$in": ["a"], "$ne": "b"}) is None
    assert equal_values({"$gt": 1}) is None


def test_time_range_bounds():
    assert time_range({"$gt": 5}) == (5.0, math.inf)
    assert time_range({"$gte": 5.5}) == (5.5, math.inf)
    assert time_range({"$lt": 7}) == (-math.inf, 7.0)
    assert time_range({"$lte": 7.5}) == (-math.inf, 7.5)
    assert time_range({"$gt": 5, "$lte": 7}) == (5.0, 7.0)
    # Several lower bounds: the tightest wins.
    assert time_range({"$gt": 5, "$gte": 6}) == (6.0, math.inf)
    # Not a range.
    assert time_range(5.0) is None
    assert time_range({"$ne": 5}) is None
    assert time_range({"$exists": True}) is None
    assert time_range({"$in": [1, 2]}) is None
    assert time_range({"$gt": "yesterday"}) is None


# --- validate -------------------------------------------------------------------------------
def test_validate_returns_a_plain_dict_copy():
    query = {"status": "pending", "submitted": {"$gt": 1}}
    checked = validate(query)
    assert checked == query and checked is not query and type(checked) is dict
    assert validate({}) == {}


@pytest.mark.parametrize("bad", [["status", "pending"], "status", None, 3, ("a", 1)])
def test_validate_refuses_a_query_that_is_not_a_mapping(bad):
    with pytest.raises(QueryError, match="a query is a dict of field -> condition, not "):
        validate(bad)


def test_validate_refuses_top_level_operators_and_non_string_fields():
    with pytest.raises(QueryError, match=r"bad field name '\$or' \(top-level operators are not supported\)"):
        validate({"$or": [{"status": "pending"}]})
    with pytest.raises(QueryError, match="bad field name 3"):
        validate({3: "x"})


def test_validate_refuses_unknown_operators():
    with pytest.raises(QueryError, match=r"unknown operator '\$regex' on 'status'; use one of"):
        validate({"status": {"$regex": "^p"}})
    with pytest.raises(QueryError, match=r"unknown operator '\$gt ' on 'attempts'"):
        validate({"attempts": {"$gt ": 1}})


@pytest.mark.parametrize("op", ["$in", "$nin"])
@pytest.mark.parametrize("arg", ["pending", 3, None, {"a": 1}])
def test_validate_refuses_in_and_nin_without_a_list(op, arg):
    with pytest.raises(QueryError, match=rf"\{op} on 'status' takes a list"):
        validate({"status": {op: arg}})


def test_validate_accepts_every_documented_operator():
    assert OPERATORS == {"$lt", "$gt", "$lte", "$gte", "$ne", "$in", "$nin", "$exists"}
    query = {"a": {"$lt": 1, "$gt": 0, "$lte": 1, "$gte": 0, "$ne": 2, "$exists": True},
             "b": {"$in": [1], "$nin": {2}}}
    assert validate(query) == query


def nested(depth: int, leaf=1):
    """``depth`` levels of alternating lists and objects around ``leaf``, built without recursion."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_validate_accepts_a_query_nested_to_the_bound():
    # (the query itself is the first level)
    query = {"payload": nested(MAX_QUERY_DEPTH - 1)}
    assert validate(query) == query


@pytest.mark.parametrize("depth", [MAX_QUERY_DEPTH, 3000])
def test_validate_refuses_a_query_nested_past_the_bound(depth):
    with pytest.raises(QueryError, match=f"a query may nest at most {MAX_QUERY_DEPTH} levels"):
        validate({"payload": nested(depth)})


def test_validate_refuses_a_query_that_contains_itself():
    loop: list = []
    loop.append(loop)
    with pytest.raises(QueryError, match="at most"):
        validate({"status": {"$in": loop}})


def test_query_error_is_a_value_error():
    assert issubclass(QueryError, ValueError)
