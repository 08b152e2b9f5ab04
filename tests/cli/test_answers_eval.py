"""The answer evaluator (backend/cli/answers.py) on a small dataset, with a model whose
answers the test controls: known answers give known scores, baselines included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from backend.cli.answers import (
    Configuration,
    evaluate_answers,
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

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any
    ) -> ChatResult:
        self.calls += 1
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


def run(folder: Path, model: LangChainModel, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(
        evaluate_answers(
            folder,
            label_field="final_decision",
            answer_field="long_answer",
            models=[model],
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
    for text, message in [
        ("x:reranker=on", "unknown setting 'reranker'; known: model, alpha"),
        ("x:alpha=high", "alpha='high' is not a float"),
        ("x:alpha", "'alpha' is not KEY=VALUE"),
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
    assert not (folder / "cache").exists() or not any((folder / "cache").iterdir())
