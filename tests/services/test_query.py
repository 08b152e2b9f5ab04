"""What a turn searches for (services/query.py): the first question itself, a follow-up
with its conversation, the model's rewrite and its fallbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.llm import ChatModel
from backend.services.query import QueryWriter, refers_back, usable_query
from tests.helpers import fake_model, make_settings

HISTORY = [("user", "What is metformin used for?"), ("assistant", "It treats type 2 diabetes.")]
FOLLOW_UP = "Does it lower the risk of cancer?"


def writer(tmp_path: Path, **settings: Any) -> QueryWriter:
    return QueryWriter(make_settings(tmp_path, "sqlite+aiosqlite://", **settings))


@pytest.mark.parametrize(
    ("question", "refers"),
    [
        ("Does it lower the risk of cancer?", True),
        ("And what is the daily allowance abroad?", True),
        ("What about children?", True),
        ("Are these results reliable?", True),
        ("Why?", True),
        ("Does metformin lower the risk of cancer in diabetic patients?", False),
        ("Is laparoscopic appendectomy safe in pregnancy?", False),
    ],
)
def test_refers_back(question: str, refers: bool) -> None:
    assert refers_back(question) is refers


async def test_a_first_question_and_a_standalone_one_search_for_themselves(
    tmp_path: Path,
) -> None:
    queries = writer(tmp_path)
    first = await queries.query(FOLLOW_UP, [])
    assert (first.text, first.mode, first.context) == (FOLLOW_UP, "question", [])
    standalone = "Is laparoscopic appendectomy safe in pregnancy?"
    second = await queries.query(standalone, HISTORY)
    assert (second.text, second.mode) == (standalone, "question")


async def test_context_weighs_the_earlier_questions_most_recent_first(tmp_path: Path) -> None:
    queries = writer(tmp_path, retrieval_context_weight=0.6, retrieval_context_turns=2)
    history = [
        ("user", "Tell me about diabetes."),
        ("assistant", "..."),
        *HISTORY,
    ]
    found = await queries.query(FOLLOW_UP, history)
    assert found.mode == "context"
    assert found.context == [("What is metformin used for?", 0.6), ("Tell me about diabetes.", 0.3)]
    assert found.text == f"Tell me about diabetes. … What is metformin used for? … {FOLLOW_UP}"
    # `question` as asked per request: the follow-up alone.
    alone = await queries.query(FOLLOW_UP, history, mode="question")
    assert (alone.text, alone.context) == (FOLLOW_UP, [])


async def test_the_rewrite_is_the_models_one_line(tmp_path: Path) -> None:
    model = fake_model(['Query: "metformin and the risk of cancer"\nIt lowers it.'])
    found = await writer(tmp_path).query(FOLLOW_UP, HISTORY, mode="rewrite", model=model)
    assert (found.text, found.mode, found.context) == (
        "metformin and the risk of cancer",
        "rewrite",
        [],
    )
    [prompt] = model.chat.prompts  # type: ignore[attr-defined]
    assert "standalone search query" in prompt[0].text
    assert "User: What is metformin used for?" in prompt[1].text
    assert "Assistant: It treats type 2 diabetes." in prompt[1].text
    assert f"Last question: {FOLLOW_UP}" in prompt[1].text


@pytest.mark.parametrize(
    "model",
    [
        fake_model(["metformin cancer risk"], sleep=0.2),  # slower than its timeout
        fake_model(["metformin cancer risk"], error_on_chunk_number=0),  # fails
        fake_model(["?"]),  # nothing usable
    ],
    ids=["slow", "failing", "unusable"],
)
async def test_a_rewrite_that_does_not_come_falls_back_to_context(
    tmp_path: Path, model: ChatModel
) -> None:
    queries = writer(tmp_path, retrieval_rewrite_timeout=0.5)
    found = await queries.query(FOLLOW_UP, HISTORY, mode="rewrite", model=model)
    assert found.mode == "context"
    assert found.context == [("What is metformin used for?", 0.7)]
    assert found.elapsed_ms < 5000


@pytest.mark.parametrize(
    ("written", "usable"),
    [
        ("Standalone search query: metformin cancer risk", "metformin cancer risk"),
        ("\n\n  'metformin and cancer'  \nmore", "metformin and cancer"),
        ("", None),
        ("cancer", None),
        ("word " * 200, None),
    ],
)
def test_usable_query(written: str, usable: str | None) -> None:
    assert usable_query(written, FOLLOW_UP) == usable
