"""How a small model reads its prompt: the bundled SmolLM2-135M answering PubMedQA
questions from their gold passages under several prompt layouts, beside the full layout
(services/prompt.build_prompt) in the same run. Label accuracy, the share of answers whose
label can be read (services' evaluator's parse_label), the share citing a source, seconds
per answer. This is how the compact layout (build_compact_prompt) and the evaluator's label
instruction were chosen; tune on the dev split, report on test with `eval-answers`.

    .venv/bin/python -m bench.prompt_layouts ../shared/eval/pubmedqa [--split dev]
        [--limit 48] [--layouts full,compact,...]

The model is called directly (no service), at temperature 0, with the compact layout's
stop sequences and at most 120 new tokens, so the layouts differ only in their messages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from backend.cli.answers import LABEL_INSTRUCTION, Question, parse_label, read_questions
from backend.cli.sources import jsonl_documents
from backend.common.settings import DEFAULT_SYSTEM_PROMPT, Settings
from backend.llm import ChatModel, build_models
from backend.llm.base import Delta
from backend.services.prompt import (
    COMPACT_REMINDER,
    COMPACT_STOP,
    build_compact_prompt,
    build_prompt,
)

LABELS = ["yes", "no", "maybe"]
# The instruction as first written (long), and as the evaluator now says it (short).
LONG = (
    "Begin your answer with one word, yes, no or maybe, on its own; then explain in one or "
    "two sentences, citing the sources you use like [1]."
)
SHORT = LABEL_INSTRUCTION.format(labels="yes, no or maybe")

Layout = Callable[[Question, list[tuple[str, str | None]], ChatModel], list[BaseMessage]]


def _full(instruction: str) -> Layout:
    def build(
        q: Question, passages: list[tuple[str, str | None]], model: ChatModel
    ) -> list[BaseMessage]:
        return build_prompt(
            system=f"{DEFAULT_SYSTEM_PROMPT}\n\n{instruction}", history=[], question=q.text,
            count_tokens=model.count_tokens, budget=model.context_window - 120, passages=passages,
        ).messages  # fmt: skip

    return build


def _compact(instruction: str, *, in_system: bool, at_end: str | None) -> Layout:
    """The compact layout's sources and question, with the instruction in the system
    message or not, and `at_end` after the question (None: the reminder alone)."""

    def build(
        q: Question, passages: list[tuple[str, str | None]], model: ChatModel
    ) -> list[BaseMessage]:
        built = build_compact_prompt(
            system=DEFAULT_SYSTEM_PROMPT, history=[], question=q.text,
            count_tokens=model.count_tokens, budget=model.context_window - 120, passages=passages,
        ).messages  # fmt: skip
        system, asked = str(built[0].text), str(built[-1].text)
        if in_system:
            system = f"{system}\n\n{instruction}"
        if at_end is not None:
            asked = asked.removesuffix(COMPACT_REMINDER).rstrip() + "\n\n" + at_end
        return [SystemMessage(system), HumanMessage(asked)]

    return build


LAYOUTS: dict[str, Layout] = {
    "full (long instruction)": _full(LONG),
    "full": _full(SHORT),
    "compact, long instruction after the reminder": _compact(
        LONG, in_system=False, at_end=f"{COMPACT_REMINDER}\n\n{LONG}"
    ),
    "compact, long in system, reminder after": _compact(LONG, in_system=True, at_end=None),
    "compact, long in system and after": _compact(LONG, in_system=True, at_end=LONG),
    "compact, long in system, short after": _compact(LONG, in_system=True, at_end=SHORT),
    "compact, short after only": _compact(SHORT, in_system=False, at_end=SHORT),
    "compact (as built: short in system and after)": _compact(SHORT, in_system=True, at_end=SHORT),
}


async def answer(model: ChatModel, messages: list[BaseMessage]) -> str:
    params = {"max_tokens": 120, "temperature": 0.0, "stop": COMPACT_STOP}
    return "".join([i.text async for i in model.stream(messages, params) if isinstance(i, Delta)])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--layouts", help="comma-separated names (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    questions = read_questions(
        args.dataset, args.split, label_field="final_decision", labels=LABELS,
        answer_field=None, limit=args.limit,
    )  # fmt: skip
    texts = {str(d.id): d.text for d in jsonl_documents(args.dataset / "corpus.jsonl")}
    model = build_models(Settings(_env_file=None, llm_provider="local")).default
    chosen = args.layouts.split(",") if args.layouts else list(LAYOUTS)
    print(f"{args.dataset.name} ({args.split}), {len(questions)} questions, gold passages, "
          f"{model.name}")  # fmt: skip
    print(f"{'layout':48} {'accuracy':>8} {'labelled':>8} {'citing':>7} {'s/answer':>8}")
    for name in chosen:
        right = labelled = citing = 0
        started = time.perf_counter()
        for q in questions:
            passages: list[tuple[str, str | None]] = [
                (texts[d], None) for d in sorted(q.relevant) if d in texts
            ]
            text = await answer(model, LAYOUTS[name](q, passages, model))
            label = parse_label(text, LABELS)
            labelled += label is not None
            right += label == q.label
            citing += bool(re.search(r"\[\d{1,2}\]", text))
        n = len(questions)
        seconds = (time.perf_counter() - started) / n
        print(f"{name:48} {right / n:8.3f} {labelled / n:8.3f} {citing / n:7.3f} {seconds:8.2f}")
    await model.aclose()


if __name__ == "__main__":
    asyncio.run(main())
