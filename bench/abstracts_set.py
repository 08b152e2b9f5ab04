"""A second shape of retrieval set, made from the shared PubMedQA set without copying it
into the project: one document per abstract (its labelled sections as Markdown headings),
graded at the document level, as BEIR's abstract collections are. Long documents are
chunked, so it measures what grouping by document and contextual chunk text change.

    .venv/bin/python -m bench.abstracts_set ../shared/eval/pubmedqa /tmp/pubmedqa-abstracts
    .venv/bin/python -m backend.cli eval /tmp/pubmedqa-abstracts --split dev

Splits: `test` (the shared set's test questions) and `dev` (its trainval questions)."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the shared PubMedQA set (BEIR layout)")
    parser.add_argument("target", type=Path)
    args = parser.parse_args()

    sections: dict[str, list[dict]] = defaultdict(list)
    with (args.source / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            sections[item["metadata"]["pmid"]].append(item)
    (args.target / "qrels").mkdir(parents=True, exist_ok=True)
    with (args.target / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for pmid, parts in sections.items():
            parts.sort(key=lambda p: int(p["_id"].rsplit("-", 1)[1]))
            text = "\n\n".join(
                f"## {p['metadata']['section'].title()}\n\n{p['text']}" for p in parts
            )
            metadata = {k: v for k, v in parts[0]["metadata"].items() if k != "section"}
            out.write(json.dumps({"_id": pmid, "title": "", "text": text, "metadata": metadata}))
            out.write("\n")
    splits: dict[str, list[str]] = defaultdict(list)
    with (
        (args.source / "queries.jsonl").open(encoding="utf-8") as lines,
        (args.target / "queries.jsonl").open("w", encoding="utf-8") as out,
    ):
        for line in lines:
            item = json.loads(line)
            out.write(json.dumps({"_id": item["_id"], "text": item["text"]}) + "\n")
            split = "test" if item["metadata"]["split"] == "test" else "dev"
            splits[split].append(item["_id"])
    for split, ids in splits.items():
        with (args.target / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as out:
            out.write("query-id\tcorpus-id\tscore\n")
            out.writelines(f"{q}\t{q}\t1\n" for q in ids if q in sections)
    print(f"{len(sections)} documents, {{k: len(v) for k, v in splits.items()}} questions")


if __name__ == "__main__":
    main()
