"""A judge model's view of an answer, RAGAS-style (`eval-answers --judge MODEL`).

- Faithfulness: the judge splits the answer into its claims, then says of each whether the
  passages the answer cites (all its sources when it cites none) support it; the share of
  supported claims. None without passages or claims.
- Answer relevance: the judge writes the questions the answer would answer; the mean
  cosine similarity (embedding model) of those to the question asked. An answer that
  dodges or wanders gets questions far from the one asked.

The prompts are below; the judge answers at temperature 0. What it writes is read
leniently (bullets or numbers, "1: yes" or "1. Yes"), and what cannot be read counts as
not supported, so a judge too weak to follow the format shows as a low score, not a high
one."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from backend.cli.evaluation import unit_vectors
from backend.llm import ChatModel
from backend.llm.base import Delta

JUDGE_SYSTEM = "You are a careful, literal grader. Follow the requested output format exactly."

CLAIMS_PROMPT = (
    "Question: {question}\n\nAnswer: {answer}\n\n"
    "List every factual claim the answer makes, each as one short sentence that stands on "
    "its own (no pronouns), one per line, each line starting with '- '. Leave out "
    "citations like [1]. Write nothing else."
)

VERDICTS_PROMPT = (
    "Passages:\n{passages}\n\nClaims:\n{claims}\n\n"
    "For each claim, decide whether the passages above state or directly imply it. Write "
    "one line per claim: its number, a colon, then yes or no. For example:\n1: yes\n2: no"
)

QUESTIONS_PROMPT = (
    "Answer: {answer}\n\n"
    "Write {count} different questions that this answer answers, one per line. Write "
    "nothing else."
)

# Part of the judge cache's key: changed prompts judge again.
JUDGE_PROMPTS = hashlib.sha256(
    (JUDGE_SYSTEM + CLAIMS_PROMPT + VERDICTS_PROMPT + QUESTIONS_PROMPT).encode()
).hexdigest()[:12]

_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.):])\s*")
_VERDICT = re.compile(r"^\s*(?:claim\s*)?(\d{1,3})\s*[:.)-]\s*\**\s*(yes|no)\b", re.I | re.M)
_CITATIONS = re.compile(r"\s*\[\d{1,3}\]")
MAX_CLAIMS = 8


@dataclass
class Verdict:
    faithfulness: float | None = None
    relevance: float | None = None
    claims: list[str] = field(default_factory=list)
    supported: list[bool] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return asdict(self)


def lines_of(text: str) -> list[str]:
    """The items of a list the judge wrote: bullets and numbers taken off, blanks dropped."""
    items = [_BULLET.sub("", line).strip() for line in text.splitlines()]
    return [item for item in items if len(item) > 3]


def verdicts_of(text: str, count: int) -> list[bool]:
    """Claim n's verdict from "n: yes|no" lines; a claim without one is not supported."""
    said: dict[int, bool] = {}
    for number, word in _VERDICT.findall(text):
        said.setdefault(int(number), word.lower() == "yes")
    if not said:  # "yes\nno\n..." without numbers
        words = re.findall(r"^\s*\**(yes|no)\b", text, re.I | re.M)
        said = {i: w.lower() == "yes" for i, w in enumerate(words, 1)}
    return [said.get(i, False) for i in range(1, count + 1)]


class Judge:
    def __init__(
        self, model: ChatModel, embeddings: Any, *, questions: int = 3, max_tokens: int = 256
    ) -> None:
        self.model = model
        self.embeddings = embeddings
        self.questions = questions
        self.max_tokens = max_tokens

    @property
    def name(self) -> str:
        return self.model.name

    async def _ask(self, prompt: str) -> str:
        messages: list[BaseMessage] = [SystemMessage(JUDGE_SYSTEM), HumanMessage(prompt)]
        params = {"max_tokens": self.max_tokens, "temperature": 0.0}
        parts = []
        stream = self.model.stream(messages, params)
        try:
            async for item in stream:
                if isinstance(item, Delta):
                    parts.append(item.text)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        return "".join(parts)

    async def judge(self, question: str, answer: str, passages: Sequence[str]) -> Verdict:
        verdict = Verdict()
        plain = _CITATIONS.sub("", answer).strip()
        if not plain:
            return Verdict(faithfulness=None, relevance=0.0)
        if passages:
            said = await self._ask(CLAIMS_PROMPT.format(question=question, answer=plain))
            verdict.claims = lines_of(said)[:MAX_CLAIMS]
            if verdict.claims:
                numbered = "\n".join(f"{i}. {c}" for i, c in enumerate(verdict.claims, 1))
                quoted = "\n\n".join(f"[{i}] {p.strip()}" for i, p in enumerate(passages, 1))
                judged = await self._ask(VERDICTS_PROMPT.format(passages=quoted, claims=numbered))
                verdict.supported = verdicts_of(judged, len(verdict.claims))
                verdict.faithfulness = sum(verdict.supported) / len(verdict.supported)
        written = await self._ask(QUESTIONS_PROMPT.format(answer=plain, count=self.questions))
        verdict.questions = lines_of(written)[: self.questions]
        verdict.relevance = self._similarity(question, verdict.questions)
        return verdict

    def _similarity(self, question: str, questions: Sequence[str]) -> float:
        if not questions:
            return 0.0
        vectors = unit_vectors(self.embeddings, [question, *questions])
        return float((vectors[1:] @ vectors[0]).mean())
