"""The project's BM25 sparse encoder (pinecone-text's downloads NLTK data; this needs nothing).

Documents are encoded with saturated, length-normalised term frequency; queries with IDF
weights; so `query · document` is the Okapi BM25 score. Token ids are a stable 32-bit hash
of the stemmed token, the same on every machine and in every process.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import Stemmer

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# A compact English stopword list (the words that carry no topic).
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()  # noqa: SIM905 - a word list reads best as prose
)


@dataclass
class SparseVector:
    indices: list[int]
    values: list[float]

    def as_dict(self) -> dict[str, list]:
        return {"indices": self.indices, "values": self.values}


class Analyzer:
    """Text → stemmed, lower-cased tokens without stopwords."""

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self._lock = threading.Lock()  # PyStemmer objects are not thread-safe

    def tokens(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
        with self._lock:
            return self._stemmer.stemWords(words)


def token_id(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "big")


@dataclass
class CorpusStats:
    """What BM25 needs to know of the corpus: document count, total length, and how many
    documents hold each token id. Kept current as chunks come and go."""

    doc_count: int = 0
    total_length: int = 0
    doc_freq: dict[int, int] = field(default_factory=dict)

    @property
    def avg_length(self) -> float:
        return self.total_length / self.doc_count if self.doc_count else 0.0


@dataclass
class TermCounts:
    """One chunk's token ids with their counts, and its length in tokens."""

    counts: dict[int, int]
    length: int


@dataclass
class CorpusDelta:
    """What a set of chunks contributes to the corpus statistics."""

    doc_count: int = 0
    total_length: int = 0
    doc_freq: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, chunks: Iterable[TermCounts]) -> CorpusDelta:
        delta = cls()
        for chunk in chunks:
            delta.doc_count += 1
            delta.total_length += chunk.length
            for tid in chunk.counts:
                delta.doc_freq[tid] = delta.doc_freq.get(tid, 0) + 1
        return delta

    def to_json(self) -> dict[str, object]:
        return {
            "n": self.doc_count,
            "len": self.total_length,
            "df": {str(tid): count for tid, count in self.doc_freq.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> CorpusDelta:
        return cls(
            doc_count=int(data.get("n", 0)),
            total_length=int(data.get("len", 0)),
            doc_freq={int(tid): int(count) for tid, count in data.get("df", {}).items()},
        )


def document_vector(doc: TermCounts, *, avg_length: float, k1: float, b: float) -> SparseVector:
    """Saturated term frequency: tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen))."""
    norm = k1 * (1 - b + b * doc.length / (avg_length or max(doc.length, 1)))
    items = sorted(doc.counts.items())
    return SparseVector(
        indices=[tid for tid, _ in items],
        values=[tf * (k1 + 1) / (tf + norm) for _, tf in items],
    )


class BM25Encoder:
    def __init__(self, stats: CorpusStats | None = None, *, k1: float = 0.9, b: float = 0.4):
        self.stats = stats or CorpusStats()
        self.k1 = k1
        self.b = b
        self.analyzer = Analyzer()
        self._lock = threading.Lock()

    def term_counts(self, text: str) -> TermCounts:
        tokens = self.analyzer.tokens(text)
        return TermCounts(counts=dict(Counter(token_id(t) for t in tokens)), length=len(tokens))

    # --- keeping the corpus statistics current -------------------------------------
    def apply(self, delta: CorpusDelta, sign: int = 1) -> None:
        """Add (sign 1) or take back (sign -1) what some chunks contribute to the corpus."""
        with self._lock:
            stats = self.stats
            stats.doc_count = max(stats.doc_count + sign * delta.doc_count, 0)
            stats.total_length = max(stats.total_length + sign * delta.total_length, 0)
            for tid, count in delta.doc_freq.items():
                left = stats.doc_freq.get(tid, 0) + sign * count
                if left > 0:
                    stats.doc_freq[tid] = left
                else:
                    stats.doc_freq.pop(tid, None)

    # --- encoding ---------------------------------------------------------------------
    def encode_document(
        self, doc: TermCounts, *, pending: CorpusDelta | None = None
    ) -> SparseVector:
        """The chunk's BM25 vector against the corpus statistics, plus `pending` (chunks
        about to be added with it, so a batch is encoded as the corpus will be)."""
        count, total = self.stats.doc_count, self.stats.total_length
        if pending is not None:
            count, total = count + pending.doc_count, total + pending.total_length
        return document_vector(
            doc, avg_length=total / count if count else 0.0, k1=self.k1, b=self.b
        )

    def idf(self, tid: int) -> float:
        n = self.stats.doc_count
        df = self.stats.doc_freq.get(tid, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def encode_query(self, text: str) -> SparseVector:
        """IDF weight for each distinct query token the corpus holds (unknown ones add nothing)."""
        ids = sorted({token_id(t) for t in self.analyzer.tokens(text)})
        ids = [tid for tid in ids if tid in self.stats.doc_freq]
        return SparseVector(indices=ids, values=[self.idf(tid) for tid in ids])
