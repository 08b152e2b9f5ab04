"""Follow-up questions searched in conversation: nDCG@10 of a follow-up that refers back
by a pronoun, in conversation by each way of making its search query (services/query.py),
beside the standalone question's and the follow-up's alone, in one run; and the time each
way adds before the search.

The conversations are built from a BEIR-layout dataset with questions of one topic each
(PubMedQA): a first turn that introduces the topic, then the question with the topic
replaced by a pronoun, scored with the question's own qrels. Two kinds of topic:
- "X: is it Y?" questions: the first turn asks about X, the follow-up is "is it Y?";
- the rarest MeSH term of the question's abstract that the question names verbatim:
  the first turn asks about it, the follow-up says "it" (or "they") instead.
Switches are the other case, where context should not hurt: a first turn on one topic,
then an unrelated standalone question (another item's), scored with its qrels.

    .venv/bin/python -m bench.followups ../shared/eval/pubmedqa [--split dev] [--limit N]
        [--weights 0.3,0.5,0.7] [--no-rewrite]

The rewrite runs with the bundled SmolLM2-135M, and (for its time) with a loopback
OpenAI-compatible model that answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pydantic import SecretStr

from backend.cli.evaluation import _CachedQueries, _read_dataset, ingested, metrics
from backend.common.settings import ModelSpec, Settings
from backend.llm import ChatModel, build_chat_model
from backend.services.query import QueryMode, QueryWriter, SearchQuery

FIRST_TURNS = (
    "What is {topic}?",
    "Tell me about {topic}.",
    "What do the papers say about {topic}?",
    "I'd like to read about {topic}.",
)
COLON = re.compile(
    r"^(?P<topic>[^:?]{4,80}):\s*(?P<rest>.*\b(?:it|they|this|these)\b.*\?)\s*$", re.I
)


@dataclass
class Conversation:
    kind: str  # followup | switch
    query_id: str  # whose qrels score it
    standalone: str  # the question as it would be asked alone
    history: list[tuple[str, str]]
    question: str  # the last turn, as asked in the conversation


def _pronoun(term: str) -> str:
    plural = term.lower().endswith("s") and not term.lower().endswith(("ss", "is", "us"))
    return "they" if plural else "it"


def _followup(text: str, meshes: set[str], frequency: Counter[str]) -> tuple[str, str] | None:
    """(topic, follow-up) for a question, or None when it names no topic to refer back to."""
    if (match := COLON.match(text)) is not None:
        rest = match["rest"].strip()
        return match["topic"].strip(), rest[0].upper() + rest[1:]
    named = [
        m
        for m in meshes
        if len(m) >= 4 and re.search(r"\b" + re.escape(m) + r"\b", text, re.I) is not None
    ]
    if not named:
        return None
    topic = min(named, key=lambda m: (frequency[m.lower()], -len(m)))
    found = re.search(r"\b" + re.escape(topic) + r"\b", text, re.I)
    assert found is not None
    said = found.group(0)
    question = text[: found.start()] + _pronoun(said) + text[found.end() :]
    return said, question[0].upper() + question[1:]


def conversations(dataset: Path, query_ids: Sequence[str]) -> list[Conversation]:
    """The follow-ups and the switches built from the questions `query_ids`."""
    texts = {}
    with (dataset / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            texts[item["_id"]] = item["text"]
    meshes: dict[str, set[str]] = defaultdict(set)
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            pmid = str(item["metadata"].get("pmid", item["_id"].split("-")[0]))
            meshes[pmid].update(item["metadata"].get("meshes") or [])
    frequency = Counter(m.lower() for ms in meshes.values() for m in ms)
    built, topics = [], []
    for n, query_id in enumerate(query_ids):
        made = _followup(texts[query_id], meshes[query_id], frequency)
        if made is None:
            continue
        topic, question = made
        first = FIRST_TURNS[n % len(FIRST_TURNS)].format(topic=topic)
        history = [("user", first), ("assistant", f"Here is what the sources say about {topic}.")]
        built.append(Conversation("followup", query_id, texts[query_id], history, question))
        topics.append((query_id, history))
    # Switches: the first turn of one follow-up, then another item's whole question.
    shuffled = random.Random(7).sample(topics, len(topics))
    for (query_id, _), (_, history) in zip(topics, shuffled[1:] + shuffled[:1], strict=True):
        built.append(Conversation("switch", query_id, texts[query_id], history, texts[query_id]))
    return built


@dataclass
class Way:
    name: str
    mode: QueryMode
    writer: QueryWriter
    model: ChatModel | None = None
    gated: bool = True  # only for turns that refer back (services/query.refers_back)


async def run(args: argparse.Namespace) -> None:
    from backend.cli.evaluation import read_split

    split_qrels = read_split(args.dataset, args.split)
    query_ids = sorted(split_qrels)[: args.limit] if args.limit else sorted(split_qrels)
    built = conversations(args.dataset, query_ids)
    _, qrels, corpus = _read_dataset(args.dataset, args.split, None, None)
    followups = sum(c.kind == "followup" for c in built)
    print(
        f"{args.dataset.name} ({args.split}): {followups} follow-ups and "
        f"{len(built) - followups} switches from {len(query_ids)} questions"
    )
    with tempfile.TemporaryDirectory(prefix="ragstream-followups-") as tmp:
        settings = Settings(
            _env_file=None,
            vector_store="embedded",
            pinecone_api_key=None,
            data_dir=Path(tmp),
            database_url=SecretStr(f"sqlite+aiosqlite:///{tmp}/eval.db"),
        )
        from backend.retrieval.embeddings import build_embeddings

        embeddings, _ = build_embeddings(settings)
        cached = _CachedQueries(embeddings)
        ways = [Way("question alone", "question", QueryWriter(settings))]
        for weight in args.weights:
            tuned = settings.model_copy(update={"retrieval_context_weight": weight})
            ways.append(Way(f"context w={weight:g}", "context", QueryWriter(tuned)))
        ways.append(Way("context, every turn", "context", QueryWriter(settings), gated=False))
        local = None
        if args.rewrite:
            local = build_chat_model(ModelSpec(provider="local"), settings)
            ways.append(Way("rewrite (SmolLM2-135M)", "rewrite", QueryWriter(settings), local))
        async with ingested(settings, cached, corpus) as done:
            print(f"ingested {done.chunks} chunks in {done.seconds:.0f} s")
            done.documents.retriever.embeddings = embeddings  # each way's searches timed whole
            search = _Searcher(done, settings)
            rows = [await search.score_standalone(built, qrels)]
            for way in ways:
                rows.append(await search.score(way, built, qrels))
            if args.rewrite:
                remote_ms = await _loopback_rewrite_ms(settings, built[:50])
            if local is not None:
                await local.aclose()
    _print(rows)
    if args.rewrite:
        print(
            f"rewrite by a loopback remote model (answers at once): query made in "
            f"{remote_ms:.1f} ms (median over {min(50, len(built))} turns)"
        )


class _Searcher:
    def __init__(self, done: Any, settings: Settings) -> None:
        self.documents, self.user = done.documents, done.user
        self.settings = settings

    async def _ndcg(self, query: SearchQuery, relevant: set[str]) -> float:
        found = await self.documents.search(
            user=self.user,
            query=query.searched,
            scopes=["private"],
            filter_=None,
            top_k=10,
            alpha=None,
            group_by="document",
            context=query.context,
        )
        ranked = list(dict.fromkeys(p.document_id for p in found.passages))
        return metrics(ranked, relevant)["ndcg@10"]

    async def score_standalone(
        self, built: list[Conversation], qrels: dict[str, set[str]]
    ) -> dict[str, Any]:
        scores: dict[str, list[float]] = defaultdict(list)
        for c in built:
            query = SearchQuery(c.standalone, "question")
            scores[c.kind].append(await self._ndcg(query, qrels[c.query_id]))
        return {"way": "standalone question (ceiling)", **_means(scores), "ms": None}

    async def score(
        self, way: Way, built: list[Conversation], qrels: dict[str, set[str]]
    ) -> dict[str, Any]:
        scores: dict[str, list[float]] = defaultdict(list)
        extra_ms: list[float] = []
        used: Counter[str] = Counter()
        for c in built:
            started = time.perf_counter()
            if way.gated:
                query = await way.writer.query(
                    c.question, c.history, mode=way.mode, model=way.model
                )
            else:
                earlier = [text for role, text in c.history if role == "user"]
                query = way.writer.with_context(c.question, earlier)
            scores[c.kind].append(await self._ndcg(query, qrels[c.query_id]))
            extra_ms.append((time.perf_counter() - started) * 1000)
            used[f"{c.kind}:{query.mode}"] += 1
        return {
            "way": way.name,
            **_means(scores),
            "ms": statistics.median(extra_ms),
            "used": dict(used),
        }


async def _loopback_rewrite_ms(settings: Settings, built: list[Conversation]) -> float:
    """The median time to make the query by a rewrite from a loopback remote model."""
    from tests.helpers import live_server
    from tests.upstream import Scenario, Upstream

    upstream = Upstream("openai")
    upstream.default = Scenario(tokens=["metformin", " and", " the", " risk", " of", " cancer"])
    with live_server(upstream.app) as live:
        spec = ModelSpec(provider="openai-compatible", model="m", base_url=f"{live.url}/v1")
        model = build_chat_model(spec, settings)
        writer = QueryWriter(settings)
        times = []
        for c in built:
            query = await writer.query(c.question, c.history, mode="rewrite", model=model)
            if c.kind == "followup":
                assert query.mode == "rewrite", query
            times.append(query.elapsed_ms)
        await model.aclose()
    return statistics.median(times)


def _means(scores: dict[str, list[float]]) -> dict[str, float]:
    return {kind: statistics.fmean(values) for kind, values in scores.items()}


def _print(rows: list[dict[str, Any]]) -> None:
    ceiling = rows[0]["followup"]
    print("nDCG@10 of the last turn; ratio: follow-ups against the standalone question;")
    print("ms: the query made and searched for (p50), the embedding model included")
    print(f"{'way':<32} {'follow-up':>9} {'ratio':>6} {'switch':>7} {'ms p50':>8}  used")
    for row in rows:
        ms = f"{row['ms']:8.1f}" if row["ms"] is not None else f"{'':>8}"
        print(
            f"{row['way']:<32} {row['followup']:9.4f} {row['followup'] / ceiling:6.3f} "
            f"{row['switch']:7.4f} {ms}  {row.get('used', '')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=None, help="questions to build from")
    parser.add_argument(
        "--weights",
        type=lambda text: [float(w) for w in text.split(",")],
        default=[0.3, 0.5, 0.7, 1.0],
        help="context weights to compare",
    )
    parser.add_argument("--no-rewrite", dest="rewrite", action="store_false")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
