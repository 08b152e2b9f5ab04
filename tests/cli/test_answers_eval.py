"""The answer evaluator (backend/cli/answers.py) on a small dataset, with a model whose
answers the test controls: known answers give known scores, baselines included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from backend.cli.answers import (
    Configuration,
    evaluate_answers,
    evaluate_cases,
    parse_config,
    parse_label,
    write_reports,
)
from backend.llm import LangChainModel
from tests.helpers import fake_embeddings

QUESTIONS = {
    "q1": ("Does aspirin prevent stroke?", "yes"),
    "q2": ("Is coffee a cause of ulcers?", "no"),
    "q3": ("Does exercise improve sleep?", "yes"),
    "q4": ("Is red wine good for the heart?", "maybe"),
}
WITH_SOURCES = {  # what the model says when the prompt holds sources
    "q1": "Yes. Aspirin prevents stroke [1].",
    "q2": "No, see [1] and [2].",  # there is one source only: [2] cites nothing
    "q3": "Perhaps it does.",  # no label, no citation
    "q4": "Maybe [9].",  # a citation of no source
}


class Scripted(BaseChatModel):
    """Answers by the question asked, and by whether the prompt holds sources."""

    calls: int = 0
    seen: list[list[str]] = []  # noqa: RUF012 - each prompt's texts

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any
    ) -> ChatResult:
        self.calls += 1
        self.seen.append([m.text for m in messages])
        question = next(q for q, (text, _) in QUESTIONS.items() if text in messages[-1].text)
        reply = WITH_SOURCES[question] if "<source" in messages[0].text else "Yes."
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])


def scripted() -> LangChainModel:
    return LangChainModel(name="scripted", provider="fake", chat=Scripted(), context_window=4096)


def dataset(folder: Path, *, drop_label: str | None = None) -> Path:
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "title": "", "text": text} for i, (text, _) in
              enumerate(QUESTIONS.values(), 1)]  # fmt: skip
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus) + "\n")
    queries = []
    for query_id, (text, label) in QUESTIONS.items():
        metadata = {"final_decision": label, "long_answer": f"About: {text}"}
        if query_id == drop_label:
            del metadata["final_decision"]
        queries.append({"_id": query_id, "text": text, "metadata": metadata})
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(1, 5))
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


def run(
    folder: Path, model: LangChainModel, *others: LangChainModel, **kwargs: Any
) -> dict[str, Any]:
    return asyncio.run(
        evaluate_answers(
            folder,
            label_field="final_decision",
            answer_field="long_answer",
            models=[model, *others],
            embeddings=fake_embeddings(),
            cache=folder / "cache",
            quiet=True,
            **kwargs,
        )
    )


def test_known_answers_give_known_scores_and_a_second_run_reads_the_cache(
    tmp_path: Path,
) -> None:
    folder = dataset(tmp_path / "set")
    model = scripted()
    report = run(folder, model, configurations=[Configuration("small", {"top_k": 2})])
    assert report["majority"] == {"label": "yes", "accuracy": 0.5}
    [row] = report["rows"]
    assert (row["config"], row["model"]) == ("small", "scripted")
    gold = row["gold passages"]
    assert gold["accuracy"] == 0.75  # q3 says no label
    assert gold["unparseable"] == 1
    assert gold["citing"] == 0.5  # q1 and q2 cite their one source; q4's [9] is nothing
    assert gold["citation_precision"] == 1.0
    assert gold["citation_recall"] == 0.5
    closed = row["closed-book"]
    assert (closed["accuracy"], closed["unparseable"]) == (0.5, 0)  # "Yes." to every one
    assert "citing" not in closed  # no sources to cite
    assert row["retrieval"]["accuracy"] == 0.75
    assert -1 <= row["retrieval"]["similarity"] <= 1  # fake embeddings: no meaning
    assert model.chat.calls == 12  # type: ignore[attr-defined]

    # Scoring again answers nothing again.
    again = scripted()
    assert run(folder, again, configurations=[Configuration("small", {"top_k": 2})]) == report
    assert again.chat.calls == 0  # type: ignore[attr-defined]

    written = write_reports(report, tmp_path / "report")
    assert [p.name for p in written] == ["answers.md", "answers.json", "answers.png"]
    table = written[0].read_text()
    assert "| small | scripted | gold passages | 0.750 | 1 | 0.500 | 1.000 | 0.500 |" in table
    assert "majority 'yes' | 0.500" in table
    assert json.loads(written[1].read_text()) == report
    assert written[2].read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "report").glob(".*partial*"))


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes, it does [1].", "yes"),
        ("The answer to your question is no.", "no"),
        ("MAYBE. The evidence is mixed.", "maybe"),
        ("It depends on the dose. No trial says yes.", None),
        ("The answer is yes, no or maybe first, then explain.", None),  # the instruction
        ("No, no: it does not.", "no"),
        ("", None),
    ],
)
def test_parse_label(text: str, label: str | None) -> None:
    assert parse_label(text, ["yes", "no", "maybe"]) == label


def test_configurations_are_checked() -> None:
    assert parse_config("fast:alpha=0.3,top_k=3") == Configuration(
        "fast", {"alpha": 0.3, "top_k": 3}
    )
    assert parse_config("plain") == Configuration("plain", {})
    assert parse_config("r:rerank=off").overrides == {"rerank": False}
    for text, message in [
        ("x:reranker=on", "unknown setting 'reranker'; known: model, alpha"),
        ("x:alpha=high", "alpha='high' is not a float"),
        ("x:alpha", "'alpha' is not KEY=VALUE"),
        ("x:rerank=maybe", "rerank='maybe' is not a on or off"),
        (":alpha=1", "give it a name first"),
    ]:
        with pytest.raises(SystemExit, match=message):
            parse_config(text)


def test_bad_datasets_and_models_are_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no queries\.jsonl"):
        run(tmp_path, scripted())
    missing = dataset(tmp_path / "missing", drop_label="q3")
    with pytest.raises(
        SystemExit,
        match=r"queries.jsonl: questions of split 'test' without 'final_decision' .*\(1\): line 3$",
    ):
        run(missing, scripted())
    folder = dataset(tmp_path / "set")
    with pytest.raises(SystemExit, match="model 'gpt-9' is not in the catalog"):
        run(folder, scripted(), configurations=[parse_config("x:model=gpt-9")])
    with pytest.raises(SystemExit, match="rerank=on needs a cross-encoder: set RERANKER_MODEL"):
        run(folder, scripted(), configurations=[parse_config("x:rerank=on")])
    with pytest.raises(SystemExit, match="--judge 'oracle' is not in the catalog"):
        run(folder, scripted(), judge="oracle")
    assert not (folder / "cache").exists() or not any((folder / "cache").iterdir())


class Judging(BaseChatModel):
    """A judge: claims, verdicts and questions as the test says."""

    @property
    def _llm_type(self) -> str:
        return "judging"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any
    ) -> ChatResult:
        prompt = messages[-1].text
        if "List every factual claim" in prompt:
            aspirin = "Aspirin prevents stroke" in prompt
            reply = (
                "- Aspirin prevents stroke.\n- It was invented in 1990."
                if aspirin
                else "- A claim."
            )
        elif prompt.startswith("Passages:"):
            reply = "1: yes\n2. No"
        else:  # the questions the answer answers
            reply = (
                "1. Does aspirin prevent stroke?" if "Aspirin" in prompt else "What is the time?"
            )
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])


def test_a_judge_scores_faithfulness_and_relevance(tmp_path: Path) -> None:
    folder = dataset(tmp_path / "set")
    judge = LangChainModel(name="judge", provider="fake", chat=Judging(), context_window=4096)
    report = run(folder, scripted(), judge, judge="judge")
    assert report["judge"] == "judge"
    [row] = report["rows"]
    gold = row["gold passages"]
    # q1's two claims, one supported; q2-q4 one claim each, supported.
    assert gold["faithfulness"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert gold["judged"] == 4
    embeddings = fake_embeddings()

    def cosine(a: str, b: str) -> float:
        x, y = np.asarray(embeddings.embed_documents([a, b]))
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    expected = [1.0] + [
        cosine(text, "What is the time?") for text, _ in list(QUESTIONS.values())[1:]
    ]
    assert gold["relevance"] == pytest.approx(sum(expected) / 4)
    closed = row["closed-book"]  # no sources: relevance only
    assert "faithfulness" not in closed
    assert closed["judged"] == 4
    table = write_reports(report, tmp_path / "report")[0].read_text()
    assert "judge: judge" in table
    assert "| faithful | relevant |" in table


CASES: list[dict[str, Any]] = [
    {"type": "rating", "rating": 1},  # not a case: left out
    {
        "type": "case", "id": "c1", "question": "Does aspirin prevent stroke?",
        "history": [{"role": "user", "content": "Hello there"},
                    {"role": "assistant", "content": "Hi."}],
        "sources": [{"id": "a#1#0", "document_id": "a", "text": "Aspirin prevents stroke.",
                     "score": 1.0, "metadata": {}}],
        "bad_answer": "Yes. Aspirin prevents stroke [1].", "comment": "too short",
    },
    {
        "type": "case", "id": "c2", "question": "Is coffee a cause of ulcers?", "history": [],
        "sources": [{"id": "c#1#0", "document_id": "c", "text": "Coffee is a drink.",
                     "score": 1.0, "metadata": {}}],
        "bad_answer": "Coffee causes ulcers.", "comment": "wrong",
    },
]  # fmt: skip


def test_exported_cases_are_answered_again(tmp_path: Path) -> None:
    cases = tmp_path / "feedback.ndjson"
    cases.write_text("\n".join(json.dumps(c) for c in CASES) + "\n")
    model = scripted()
    report = asyncio.run(
        evaluate_cases(cases, models=[model], embeddings=fake_embeddings(),
                       cache=tmp_path / "cache", quiet=True)
    )  # fmt: skip
    assert (report["split"], report["questions"], report["variants"]) == (
        "cases", 2, ["stored sources"],
    )  # fmt: skip
    scores = report["rows"][0]["stored sources"]
    assert scores["repeated"] == 0.5  # c1's bad answer came back; c2's did not
    assert scores["citing"] == 1.0
    assert "accuracy" not in scores
    assert "citation_precision" not in scores
    prompts = model.chat.seen  # type: ignore[attr-defined]
    first = next(p for p in prompts if "Does aspirin prevent stroke?" in p[-1])
    assert "Aspirin prevents stroke." in first[0]  # its own sources
    assert first[1:3] == ["Hello there", "Hi."]  # after its own thread

    broken = tmp_path / "broken.ndjson"
    broken.write_text(json.dumps({**CASES[1], "bad_answer": None} | {"id": "x"}) + "\n"
                      + json.dumps({"type": "case", "id": "y"}) + "\n")  # fmt: skip
    with pytest.raises(
        SystemExit, match=r"broken.ndjson:1: not an evaluation case \(it needs id, question"
    ):
        asyncio.run(evaluate_cases(broken, models=[model], embeddings=fake_embeddings()))
    empty = tmp_path / "ratings.ndjson"
    empty.write_text(json.dumps(CASES[0]) + "\n")
    with pytest.raises(SystemExit, match="no evaluation cases"):
        asyncio.run(evaluate_cases(empty, models=[model], embeddings=fake_embeddings()))
