"""Answer quality on a BEIR-layout dataset, through the real chat pipeline (the same
retrieval, prompt, model and settings as a chat): `python -m backend.cli eval-answers`.

Each question is answered, per configuration (`--config NAME:KEY=VALUE,...`), three ways:
with retrieval as configured, closed-book (no retrieval), and with the gold passages (the
qrels' documents as the context): what retrieval adds, and what a perfect retriever would.
Scores: the label's accuracy (parsed from the answer's first words, under an instruction
that asks for it first; unparseable ones counted) beside the majority label's; the share
of answers that cite a source, citation precision and recall by the qrels; similarity to
the expected free-text answer (cosine of the embedding model's vectors). Answers are
cached by configuration, so scoring again is cheap."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from backend.cli.evaluation import _numbers, ingest_corpus, read_split, unit_vectors
from backend.cli.judge import JUDGE_PROMPTS, Judge, Verdict
from backend.cli.sources import jsonl_documents, jsonl_items
from backend.common.errors import ServiceError
from backend.llm import ChatModel
from backend.retrieval.passage import Passage
from backend.services import prompt
from backend.services.turns import ChatOptions, RetrievalOptions

log = logging.getLogger(__name__)

# Part of the answers cache's key: a changed prompt layout answers again.
PROMPT_LAYOUT = hashlib.sha256(
    repr(
        [prompt.CONTEXT_INSTRUCTION, prompt.REVISION_REQUEST, prompt.COMPACT_REMINDER,
         prompt.COMPACT_STOP, prompt.COMPACT_SOURCES, prompt.COMPACT_SOURCE_CHARS,
         prompt.COMPACT_HISTORY_MESSAGES, prompt.COMPACT_ANSWER_CHARS]
    ).encode()
).hexdigest()[:12]  # fmt: skip

# Short, and restated after the question by the compact prompt: of the phrasings tried on
# the dev split with SmolLM2 (docs/evaluation.md), the one it followed most often.
LABEL_INSTRUCTION = "Answer {labels} first, then explain from the sources, citing them like [1]."
VARIANTS = ("retrieval", "closed-book", "gold passages")
CASE_VARIANTS = ("stored sources",)  # an exported case, answered from its own sources
GIVEN_PASSAGES = {"gold passages", "stored sources"}  # the question's passages as context
REPEATED = 0.95  # similarity to a case's bad answer above which it counts as repeated


def _switch(value: str) -> bool:
    if value.lower() in ("on", "yes", "true", "1"):
        return True
    if value.lower() in ("off", "no", "false", "0"):
        return False
    raise ValueError(value)


_switch.__name__ = "on or off"


def _prompt_style(value: str) -> str:
    if value not in ("full", "compact"):
        raise ValueError(value)
    return value


_prompt_style.__name__ = "full or compact"
# What --config may set, and how its value is read.
CONFIG_KEYS: dict[str, Any] = {
    "model": str,
    "alpha": float,
    "top_k": int,
    "query": str,
    "group_by": str,
    "temperature": float,
    "max_tokens": int,
    "rerank": _switch,
    "prompt": _prompt_style,
}
_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass
class Question:
    id: str
    text: str
    relevant: set[str]
    label: str | None = None
    answer: str | None = None  # the expected free text
    passages: list[Passage] = field(default_factory=list)  # gold, or a case's own sources
    history: list[tuple[str, str]] = field(default_factory=list)  # a case's earlier turns
    bad_answer: str | None = None  # a case's answer rated 👎


@dataclass
class Configuration:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def options(self, *, retrieval: bool) -> ChatOptions:
        o = self.overrides
        return ChatOptions(
            model=o.get("model"),
            max_tokens=o.get("max_tokens"),
            temperature=o.get("temperature", 0.0),
            prompt=o.get("prompt"),
            retrieval=RetrievalOptions(
                enabled=retrieval,
                top_k=o.get("top_k"),
                alpha=o.get("alpha"),
                group_by=o.get("group_by"),
                query=o.get("query"),
                rerank=o.get("rerank"),
            ),
        )


def parse_config(text: str) -> Configuration:
    """`NAME:KEY=VALUE,...` (or `NAME` alone: the settings as they are)."""
    name, _, rest = text.partition(":")
    if not name.strip():
        raise SystemExit(f"--config {text!r}: give it a name first (NAME:KEY=VALUE,...)")
    overrides: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise SystemExit(f"--config {name}: {pair!r} is not KEY=VALUE")
        if key not in CONFIG_KEYS:
            known = ", ".join(CONFIG_KEYS)
            raise SystemExit(f"--config {name}: unknown setting {key!r}; known: {known}")
        try:
            overrides[key] = CONFIG_KEYS[key](value.strip())
        except ValueError:
            kind = CONFIG_KEYS[key].__name__
            raise SystemExit(f"--config {name}: {key}={value!r} is not a {kind}") from None
    return Configuration(name.strip(), overrides)


def read_questions(
    dataset: Path,
    split: str,
    *,
    label_field: str | None,
    labels: Sequence[str],
    answer_field: str | None,
    limit: int | None = None,
) -> list[Question]:
    """The split's questions with their expected label and answer; SystemExit naming the
    file and line of what is missing or wrong."""
    path = dataset / "queries.jsonl"
    for needed in (path, dataset / "corpus.jsonl"):
        if not needed.is_file():
            raise SystemExit(
                f"{dataset}: no {needed.name} (the BEIR layout: corpus.jsonl, queries.jsonl, "
                "qrels/SPLIT.tsv)"
            )
    qrels = read_split(dataset, split)
    questions, missing = [], []
    for number, item in jsonl_items(path):
        try:
            query_id, text = str(item["_id"]), str(item["text"])
        except (KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{number}: not a query (no {exc})") from exc
        if query_id not in qrels:
            continue
        metadata = item.get("metadata") or {}
        question = Question(query_id, text, qrels[query_id])
        if label_field:
            label = metadata.get(label_field)
            if label is None:
                missing.append(number)
                continue
            if str(label).lower() not in labels:
                raise SystemExit(
                    f"{path}:{number}: {label_field} is {label!r}, not one of "
                    f"{', '.join(labels)} (--labels)"
                )
            question.label = str(label).lower()
        if answer_field and metadata.get(answer_field):
            question.answer = str(metadata[answer_field])
        questions.append(question)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise SystemExit(
            f"{path}: questions of split {split!r} without {label_field!r} in their "
            f"metadata ({len(missing)}): line {shown}"
        )
    questions.sort(key=lambda q: q.id)
    return questions[:limit] if limit else questions


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label an answer gives: the one of `labels` in its first sentence (its first
    15 words at most: "Yes, …", "The answer to your question is no."); None when there is
    none, or more than one (an echo of the instruction: "yes, no or maybe")."""
    sentence = re.split(r"[.!?\n]", text.strip().lower(), maxsplit=1)[0]
    head = " ".join(re.findall(r"[a-z]+", sentence)[:15])
    found = set(re.findall(r"\b(" + "|".join(map(re.escape, labels)) + r")\b", head))
    return found.pop() if len(found) == 1 else None


def cited(text: str, sources: Sequence[dict[str, Any]]) -> list[str]:
    """The document ids an answer cites ([n] for the n-th source), in order, once each."""
    numbers = [int(n) for n in _CITATION.findall(text)]
    ids = [str(sources[n - 1]["document_id"]) for n in numbers if 1 <= n <= len(sources)]
    return list(dict.fromkeys(ids))


def read_cases(path: Path, limit: int | None = None) -> list[Question]:
    """The evaluation cases of an export (`export-feedback`: the lines of type `case`; the
    others are left out); SystemExit naming the line of one that is not a case."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (an export of `python -m backend.cli "
                         "export-feedback --kinds cases`)")  # fmt: skip
    questions = []
    for number, item in jsonl_items(path):
        if not isinstance(item, dict) or item.get("type") != "case":
            continue
        if not all(isinstance(item.get(k), str) for k in ("id", "question", "bad_answer")):
            raise SystemExit(
                f"{path}:{number}: not an evaluation case (it needs id, question and "
                "bad_answer, as text)"
            )
        try:
            history = [(str(h["role"]), str(h["content"])) for h in item.get("history") or []]
            sources = list(item.get("sources") or [])
            question = Question(
                str(item["id"]), str(item["question"]), set(),
                passages=[Passage.from_source(s) for s in sources],
                history=history, bad_answer=str(item["bad_answer"]),
            )  # fmt: skip
        except (KeyError, TypeError, AttributeError) as exc:
            raise SystemExit(f"{path}:{number}: not an evaluation case ({exc!r})") from exc
        if not question.text.strip():
            raise SystemExit(f"{path}:{number}: the case has no question")
        questions.append(question)
    if not questions:
        raise SystemExit(f'{path}: no evaluation cases (lines with "type": "case")')
    return questions[:limit] if limit else questions


@dataclass
class Answered:
    text: str
    sources: list[dict[str, Any]]
    seconds: float
    error: str | None = None


class _Cache:
    """Rows of one (configuration, variant[, judge]) by question id, in a JSONL file that
    grows as they come."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{digest}.jsonl"
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupted run
                self.rows[row.pop("id")] = row

    def add(self, question_id: str, row: dict[str, Any], *, keep: bool = True) -> None:
        """Keep a row; with `keep=False` for this run only (the next asks again)."""
        self.rows[question_id] = row
        if keep:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"id": question_id, **row}) + "\n")


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def score(
    questions: Sequence[Question],
    answers: dict[str, Answered],
    labels: Sequence[str],
    similarity: dict[str, float] | None = None,
    verdicts: dict[str, Verdict] | None = None,
) -> dict[str, Any]:
    """The scores of one variant's answers."""
    n = len(questions)
    parsed = {q.id: parse_label(answers[q.id].text, labels) for q in questions}
    labelled = [q for q in questions if q.label is not None]
    result: dict[str, Any] = {"questions": n}
    if labelled:
        result["accuracy"] = sum(parsed[q.id] == q.label for q in labelled) / len(labelled)
        result["unparseable"] = sum(parsed[q.id] is None for q in labelled)
    with_sources = [q for q in questions if answers[q.id].sources]
    if with_sources:
        citing = [q for q in with_sources if cited(answers[q.id].text, answers[q.id].sources)]
        result["citing"] = len(citing) / len(with_sources)
        judged = [q for q in with_sources if q.relevant]  # the qrels say what is relevant
        if judged:
            cited_ids = {
                q.id: set(cited(answers[q.id].text, answers[q.id].sources)) for q in judged
            }
            total = sum(len(c) for c in cited_ids.values())
            right = sum(len(cited_ids[q.id] & q.relevant) for q in judged)
            result["citation_precision"] = right / total if total else 0.0
            result["citation_recall"] = statistics.fmean(
                len(cited_ids[q.id] & q.relevant) / len(q.relevant) for q in judged
            )
    if similarity:
        result["similarity"] = statistics.fmean(similarity.values())
        cases = [q for q in questions if q.bad_answer is not None and q.id in similarity]
        if cases:  # how many answers are (nearly) the bad answer again
            result["repeated"] = sum(similarity[q.id] >= REPEATED for q in cases) / len(cases)
    if verdicts:
        faithful = [v.faithfulness for v in verdicts.values() if v.faithfulness is not None]
        relevant = [v.relevance for v in verdicts.values() if v.relevance is not None]
        for key, values in (("faithfulness", faithful), ("relevance", relevant)):
            if (mean := _mean(values)) is not None:
                result[key] = mean
        result["judged"] = len(verdicts)
    result["errors"] = sum(answers[q.id].error is not None for q in questions)
    result["seconds_per_question"] = statistics.fmean(answers[q.id].seconds for q in questions)
    return result


@dataclass
class _Run:
    """What one evaluation asks: its questions, the corpus to search (none for cases),
    the ways each is answered, and how it is scored."""

    questions: list[Question]
    corpus: list[Any]
    variants: tuple[str, ...]
    labels: list[str]
    source: str  # the dataset or cases file, for the cache's key
    compare: str | None  # "answer" (expected text) or "bad_answer" (a case's), or None
    instruction: str = ""


async def evaluate_answers(
    dataset: Path,
    *,
    split: str = "test",
    labels: Sequence[str] = ("yes", "no", "maybe"),
    label_field: str | None = None,
    answer_field: str | None = None,
    configurations: Sequence[Configuration] = (),
    limit: int | None = None,
    cache: Path | None = None,
    judge: str | None = None,
    models: Sequence[ChatModel] | None = None,
    embeddings: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Ingest the dataset into a fresh embedded store and score every configuration's
    answers, with their baselines."""
    if not label_field and not answer_field:
        raise SystemExit("nothing to score: give --label-field and/or --answer-field")
    labels = [label.strip().lower() for label in labels if label.strip()]
    questions = read_questions(
        dataset, split, label_field=label_field, labels=labels, answer_field=answer_field,
        limit=limit,
    )  # fmt: skip
    if not questions:
        raise SystemExit(f"{dataset}: split {split!r} has no questions")
    corpus = []
    for doc in jsonl_documents(dataset / "corpus.jsonl"):
        doc.metadata = _numbers(doc.metadata)
        corpus.append(doc)
    texts = {str(d.id): d.text for d in corpus}
    for question in questions:
        question.passages = [
            Passage(doc, doc, texts[doc], 1.0, {}) for doc in sorted(question.relevant)
            if doc in texts
        ]  # fmt: skip
    instruction = ""
    if label_field:
        instruction = LABEL_INSTRUCTION.format(labels=", ".join(labels[:-1]) + f" or {labels[-1]}")
    run = _Run(
        questions, corpus, VARIANTS, labels, str(dataset),
        "answer" if answer_field else None, instruction,
    )  # fmt: skip
    report = await _evaluate(run, configurations, cache, judge, models, embeddings, quiet)
    report.update(dataset=dataset.name, split=split)
    if label_field:
        counts = Counter(q.label for q in questions)
        majority, hits = counts.most_common(1)[0]
        report["majority"] = {"label": majority, "accuracy": hits / len(questions)}
    return report


async def evaluate_cases(
    cases: Path,
    *,
    configurations: Sequence[Configuration] = (),
    limit: int | None = None,
    cache: Path | None = None,
    judge: str | None = None,
    models: Sequence[ChatModel] | None = None,
    embeddings: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Answer exported 👎 cases again, each from its own sources and after its own thread:
    whether the bad answer comes back (`repeated`), citations and, with a judge, its
    faithfulness and relevance."""
    questions = read_cases(cases, limit)
    run = _Run(questions, [], CASE_VARIANTS, [], str(cases), "bad_answer")
    report = await _evaluate(run, configurations, cache, judge, models, embeddings, quiet)
    report.update(dataset=cases.name, split="cases")
    return report


async def _evaluate(
    run: _Run,
    configurations: Sequence[Configuration],
    cache: Path | None,
    judge_name: str | None,
    models: Sequence[ChatModel] | None,
    embeddings: Any,
    quiet: bool,
) -> dict[str, Any]:
    from backend.common.settings import Settings
    from backend.retrieval.embeddings import build_embeddings
    from backend.services.components import build_components

    configurations = list(configurations) or [Configuration("default")]
    base = Settings(_env_file=None, vector_store="embedded", pinecone_api_key=None)
    if embeddings is None:
        embeddings, _ = build_embeddings(base)
    cache = cache or Path(".eval-cache")
    report: dict[str, Any] = {
        "questions": len(run.questions),
        "labels": run.labels,
        "variants": list(run.variants),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="ragstream-answers-") as tmp:
        settings = base.model_copy(
            update={
                "data_dir": Path(tmp),
                "database_url": SecretStr(f"sqlite+aiosqlite:///{tmp}/eval.db"),
            }
        )
        components = await build_components(settings, models=models, embeddings=embeddings)
        try:
            catalog = components.models
            known = catalog.ids()
            for configuration in configurations:
                _check(configuration, known, reranker=settings.reranker_model is not None)
            judge = None
            if judge_name is not None:
                if judge_name not in known:
                    raise SystemExit(
                        f"--judge {judge_name!r} is not in the catalog (LLM_MODELS): "
                        f"{', '.join(known)}"
                    )
                judge = Judge(catalog.by_id[judge_name], embeddings)
                report["judge"] = judge_name
            ingested: list[Any] = []

            async def asker() -> Any:
                """The user who asks, the corpus ingested as theirs: once, and only when
                an answer is not in the cache (scoring again ingests nothing)."""
                if not ingested:
                    quietly = quiet or not run.corpus
                    corpus, sessions = run.corpus, components.sessions
                    ingested.append(
                        await ingest_corpus(components.documents, sessions, corpus, quietly)
                    )
                return ingested[0].user

            system = settings.system_prompt
            for configuration in configurations:
                model = configuration.overrides.get("model") or catalog.default.name
                style = configuration.overrides.get("prompt") or catalog.by_id[model].prompt
                row: dict[str, Any] = {
                    "config": configuration.name,
                    "overrides": configuration.overrides,
                    "model": model,
                    "prompt": style,
                }
                for variant in run.variants:
                    key = {
                        "dataset": run.source, "variant": variant, "model": model,
                        "overrides": configuration.overrides, "system": system,
                        "instruction": run.instruction, "prompt": style,
                        "layout": PROMPT_LAYOUT,
                    }  # fmt: skip
                    answers = await _answer_all(
                        components.chat_service, asker, run.questions, configuration,
                        variant, (system, run.instruction), _Cache(cache, key), quiet,
                    )  # fmt: skip
                    similarity = (
                        _similarity(embeddings, run.questions, answers, run.compare)
                        if run.compare
                        else None
                    )
                    verdicts = None
                    if judge is not None:
                        key = {**key, "judge": judge.name, "prompts": JUDGE_PROMPTS}
                        verdicts = await _judge_all(
                            judge, run.questions, answers, variant, _Cache(cache, key), quiet
                        )
                    row[variant] = score(run.questions, answers, run.labels, similarity, verdicts)
                report["rows"].append(row)
        finally:
            await components.close()
    return report


def _check(configuration: Configuration, known: Sequence[str], *, reranker: bool) -> None:
    model = configuration.overrides.get("model")
    if model is not None and model not in known:
        raise SystemExit(
            f"--config {configuration.name}: model {model!r} is not in the catalog "
            f"(LLM_MODELS): {', '.join(known)}"
        )
    if configuration.overrides.get("rerank") and not reranker:
        raise SystemExit(
            f"--config {configuration.name}: rerank=on needs a cross-encoder: set "
            "RERANKER_MODEL to its folder"
        )


async def _answer_all(
    service: Any,
    asker: Callable[[], Awaitable[Any]],
    questions: Sequence[Question],
    configuration: Configuration,
    variant: str,
    prompt: tuple[str, str],  # the system prompt, the answer's format
    cache: _Cache,
    quiet: bool,
) -> dict[str, Answered]:
    from tqdm import tqdm

    todo = [q for q in questions if q.id not in cache.rows]
    user = await asker() if todo else None
    label = f"{configuration.name} · {variant}"
    for question in tqdm(todo, desc=label, disable=quiet or not todo, file=sys.stderr):
        options = configuration.options(retrieval=variant == "retrieval")
        started = time.perf_counter()
        try:
            turn = await service.start(
                user=user, message=question.text, conversation_id=None, options=options,
                history=question.history, system_prompt=prompt[0], persist=False,
            )  # fmt: skip
            turn.instruction = prompt[1]
            if variant in GIVEN_PASSAGES:
                turn.passages = list(question.passages)
            answer = await service.complete(turn)
            answered = Answered(answer.text, answer.sources, time.perf_counter() - started)
        except ServiceError as exc:
            answered = Answered("", [], time.perf_counter() - started, error=str(exc))
        cache.add(question.id, answered.__dict__, keep=answered.error is None)
    return {q.id: Answered(**cache.rows[q.id]) for q in questions}


async def _judge_all(
    judge: Judge,
    questions: Sequence[Question],
    answers: dict[str, Answered],
    variant: str,
    cache: _Cache,
    quiet: bool,
) -> dict[str, Verdict]:
    """The judge's verdict on each answer that did not fail; the passages it is checked
    against are those it cites, or all its sources when it cites none."""
    from tqdm import tqdm

    todo = [q for q in questions if q.id not in cache.rows and answers[q.id].error is None]
    for question in tqdm(todo, desc=f"judging · {variant}", disable=quiet or not todo,
                         file=sys.stderr):  # fmt: skip
        answer = answers[question.id]
        numbers = [int(n) for n in _CITATION.findall(answer.text)]
        chosen = [answer.sources[n - 1] for n in dict.fromkeys(numbers)
                  if 1 <= n <= len(answer.sources)] or answer.sources  # fmt: skip
        try:
            verdict = await judge.judge(question.text, answer.text, [s["text"] for s in chosen])
        except Exception as exc:  # noqa: BLE001 - a judge that failed: asked again next run
            log.warning("the judge failed on %s: %s", question.id, exc)
            continue
        cache.add(question.id, verdict.row())
    return {q.id: Verdict(**cache.rows[q.id]) for q in questions if q.id in cache.rows}


def _similarity(
    embeddings: Any, questions: Sequence[Question], answers: dict[str, Answered], compare: str
) -> dict[str, float]:
    """Cosine of each answer to the question's `compare` text (expected or bad answer)."""
    pairs = [(q.id, answers[q.id].text, getattr(q, compare)) for q in questions
             if getattr(q, compare) and not answers[q.id].error]  # fmt: skip
    if not pairs:
        return {}
    vectors = unit_vectors(embeddings, [t for _, t, _ in pairs] + [a for *_, a in pairs])
    half = len(pairs)
    return {
        query_id: float(vectors[i] @ vectors[half + i]) for i, (query_id, *_) in enumerate(pairs)
    }


# --- reports ----------------------------------------------------------------------------
COLUMNS = (
    ("accuracy", "acc", "{:.3f}"),
    ("unparseable", "unparsed", "{}"),
    ("citing", "citing", "{:.3f}"),
    ("citation_precision", "cite P", "{:.3f}"),
    ("citation_recall", "cite R", "{:.3f}"),
    ("similarity", "sim", "{:.3f}"),
    ("repeated", "repeated", "{:.3f}"),
    ("faithfulness", "faithful", "{:.3f}"),
    ("relevance", "relevant", "{:.3f}"),
    ("errors", "errors", "{}"),
    ("seconds_per_question", "s/q", "{:.2f}"),
)


def table(report: dict[str, Any]) -> list[list[str]]:
    """The report's rows: a configuration's variants one after the other."""
    rows = [["config", "model", "answers", *(title for _, title, _ in COLUMNS)]]
    for row in report["rows"]:
        for variant in report["variants"]:
            scores = row[variant]
            cells = [fmt.format(scores[k]) if k in scores else "" for k, _, fmt in COLUMNS]
            rows.append([row["config"], row["model"], variant, *cells])
    if "majority" in report:
        majority = report["majority"]
        rows.append(
            ["(baseline)", "-", f"majority '{majority['label']}'",
             f"{majority['accuracy']:.3f}", *[""] * (len(COLUMNS) - 1)]
        )  # fmt: skip
    shown = [i for i in range(len(rows[0])) if i < 3 or any(r[i] for r in rows[1:])]
    return [[r[i] for i in shown] for r in rows]


def _title(report: dict[str, Any]) -> str:
    judged = f"; judge: {report['judge']}" if "judge" in report else ""
    return f"{report['dataset']} ({report['split']}): {report['questions']} questions{judged}"


def print_report(report: dict[str, Any]) -> None:
    rows = table(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(_title(report))
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def markdown(report: dict[str, Any]) -> str:
    rows = table(report)
    lines = [
        f"# Answers on {_title(report)}",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
        "",
    ]
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    """Accuracy (or similarity) of each configuration's variants, and the majority line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measure = (
        "accuracy" if "majority" in report else "faithfulness" if "judge" in report
        else "similarity"
    )  # fmt: skip
    names = [row["config"] for row in report["rows"]]
    figure, axes = plt.subplots(figsize=(max(5, 1.8 * len(names) + 2), 4))
    variants = report["variants"]
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [row[variant].get(measure, 0.0) for row in report["rows"]]
        axes.bar([x + i * width for x in range(len(names))], values, width, label=variant)
    if "majority" in report:
        axes.axhline(report["majority"]["accuracy"], color="grey", linestyle="--",
                     label=f"majority '{report['majority']['label']}'")  # fmt: skip
    axes.set_xticks([x + width for x in range(len(names))], names)
    axes.set_ylim(0, 1)
    axes.set_ylabel(measure)
    axes.set_title(f"{report['dataset']} ({report['split']}): {measure}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(report: dict[str, Any], folder: Path) -> list[Path]:
    """answers.md, answers.json and answers.png in `folder`, each written whole (to a
    temporary name first, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, write in (
        ("answers.md", lambda p: p.write_text(markdown(report), encoding="utf-8")),
        ("answers.json", lambda p: p.write_text(json.dumps(report, indent=2), encoding="utf-8")),
        ("answers.png", lambda p: chart(report, p)),
    ):
        final = folder / name
        partial = final.with_name(f".{final.stem}.partial{final.suffix}")
        write(partial)
        partial.replace(final)
        written.append(final)
    return written
