"""The metadata filter language: validation errors name the path; the embedded store's
index-based evaluation and the pgvector store's SQL agree with the reference semantics on
random filters."""

from __future__ import annotations

import random
from typing import Any

import pytest

from backend.retrieval.embedded import _Namespace
from backend.retrieval.filters import FilterError, matches, validate_filter
from backend.retrieval.postgres_store import PostgresVectorStore
from backend.retrieval.store import Record


@pytest.mark.parametrize(
    ("filter_", "path", "words"),
    [
        ([], "filter", "expected an object"),
        ({"year": {"$gt": "2010"}}, "filter.year.$gt", "expected a number"),
        ({"year": {"$between": [1, 2]}}, "filter.year.$between", "unknown operator"),
        ({"$and": [{"a": 1}, {"b": {"$in": "x"}}]}, "filter.$and[1].b.$in", "expected a list"),
        ({"$or": []}, "filter.$or", "non-empty list"),
        ({"$not": {"a": 1}}, "filter.$not", "unknown operator"),
        ({"a": None}, "filter.a", "expected a string, number or boolean"),
        ({"a": {"$eq": [1]}}, "filter.a.$eq", "expected a string, number or boolean"),
        ({"a": {"$in": [1, {"x": 1}]}}, "filter.a.$in[1]", "expected a string"),
        ({"a": {"$exists": 1}}, "filter.a.$exists", "true or false"),
        ({"a": {}}, "filter.a", "empty condition"),
    ],
)
def test_malformed_filters_name_the_offending_part(filter_: object, path: str, words: str) -> None:
    with pytest.raises(FilterError) as error:
        validate_filter(filter_)
    assert error.value.path == path
    assert words in error.value.message


RECORDS: list[dict[str, Any]] = [
    {"year": 2011, "section": "BACKGROUND", "meshes": ["Apoptosis", "Mitochondria"], "ok": True},
    {"year": 2015.0, "section": "RESULTS", "meshes": ["Humans"], "ok": False},
    {"section": "METHODS", "meshes": []},
    {"year": "2011", "section": "RESULTS"},
    {"year": 1, "ok": 1},
]


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ({"year": 2011}, [0]),
        ({"year": {"$eq": 2015}}, [1]),  # 2015 == 2015.0
        ({"year": "2011"}, [3]),  # strings and numbers differ
        ({"ok": True}, [0]),  # booleans and numbers differ: 1 is not true
        ({"year": {"$gte": 2011, "$lt": 2016}}, [0, 1]),
        ({"meshes": "Mitochondria"}, [0]),  # a list matches any element
        ({"meshes": {"$in": ["Humans", "Apoptosis"]}}, [0, 1]),
        ({"meshes": {"$nin": ["Humans"]}}, [0, 2, 3, 4]),
        ({"section": {"$ne": "RESULTS"}}, [0, 2, 4]),
        ({"year": {"$exists": False}}, [2]),
        ({"$or": [{"section": "METHODS"}, {"year": {"$lt": 2000}}]}, [2, 4]),
        ({"$and": [{"section": "RESULTS"}, {"year": {"$gt": 2000}}]}, [1]),
    ],
)
def test_reference_semantics(filter_: dict, expected: list[int]) -> None:
    validate_filter(filter_)
    assert [i for i, m in enumerate(RECORDS) if matches(filter_, m)] == expected


def _random_metadata(rng: random.Random) -> dict:
    metadata: dict = {}
    for key in ("a", "b", "c", "tags"):
        if rng.random() < 0.25:
            continue
        if key == "tags":
            metadata[key] = rng.sample(["x", "y", "z", "w"], rng.randint(0, 3))
        else:
            metadata[key] = rng.choice([0, 1, 2, 2.0, 3.5, "1", "x", "y", True, False])
    return metadata


def _random_filter(rng: random.Random, depth: int = 0) -> dict:
    if depth < 2 and rng.random() < 0.3:
        return {
            rng.choice(["$and", "$or"]): [
                _random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))
            ]
        }
    key = rng.choice(["a", "b", "c", "tags", "missing"])
    value = lambda: rng.choice([0, 1, 2, 3.5, "1", "x", "y", "z", True, False])  # noqa: E731
    op = rng.choice(["bare", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"])
    if op == "bare":
        return {key: value()}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {key: {op: rng.choice([0, 1, 1.5, 2, 3])}}
    if op in ("$in", "$nin"):
        return {key: {op: [value() for _ in range(rng.randint(0, 3))]}}
    if op == "$exists":
        return {key: {op: rng.random() < 0.5}}
    return {key: {op: value()}}


def test_the_embedded_index_agrees_with_the_reference_on_random_filters() -> None:
    rng = random.Random(20261122)
    space = _Namespace(dimension=2)
    metadata = [_random_metadata(rng) for _ in range(300)]
    for i, m in enumerate(metadata):
        space.add(Record(f"r{i}", [0.0, 1.0], None, m))
    for i in range(0, 300, 7):  # deletions leave holes the masks must respect
        space.remove(f"r{i}")
    alive = {i for i in range(300) if i % 7}
    for _ in range(2000):
        filter_ = validate_filter(_random_filter(rng))
        got = {int(space.ids[row][1:]) for row in space.mask(filter_).nonzero()[0]}
        want = {i for i in alive if matches(filter_, metadata[i])}
        assert got == want, filter_


async def test_the_sql_filters_agree_with_the_reference_on_random_filters(
    pgvector_url: str,
) -> None:
    rng = random.Random(20261202)
    metadata = [_random_metadata(rng) for _ in range(300)]
    store = await PostgresVectorStore(pgvector_url, dimension=2).open()
    try:
        await store.upsert(
            [Record(f"r{i:03}", [0.0, 1.0], None, m) for i, m in enumerate(metadata)],
            namespace="ns",
        )
        await store.delete([f"r{i:03}" for i in range(0, 300, 7)], namespace="ns")
        alive = [i for i in range(300) if i % 7]
        for _ in range(2000):
            filter_ = validate_filter(_random_filter(rng))
            hits = await store.query(
                namespace="ns", vector=None, sparse=None, top_k=300, filter_=filter_
            )
            want = [f"r{i:03}" for i in alive if matches(filter_, metadata[i])]
            assert [m.id for m in hits] == want, filter_
    finally:
        await store.close()
