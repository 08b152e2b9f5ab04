"""Command-line tools: `python -m backend.cli ingest|eval|users ...`.

ingest: folders and JSONL files into the knowledge base, through the same ingestion path
        as the API, with a progress bar and a summary. For corpora too large for one request;
        `--ray [--address A]` chunks and embeds on a Ray cluster (requirements-ray.txt).
eval:   a BEIR-layout dataset (corpus.jsonl, queries.jsonl, qrels/*.tsv) through the real
        ingestion and search path: nDCG@10, recall@10, recall@100 and MRR for keyword-only,
        dense-only and hybrid search at several alphas, grouped by document and not, with
        and without contextual chunk text, plus timings. `--split dev` for tuning.
copy-vectors: `copy-vectors embedded postgres` (or back) copies the vector store's records
        with their vectors, without re-embedding (VECTOR_STORE=postgres afterwards).
users:  accounts, for operators (with REGISTRATION=closed, the only way in): `users add
        NAME [--admin] [--password-stdin]`, `users disable NAME`, `users list`. Only this
        command grants the admin flag (no per-user limits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from backend.cli.sources import batches, iter_documents
from backend.services.feedback import KINDS as FEEDBACK_KINDS

log = logging.getLogger("backend.cli")


# --- ingest ----------------------------------------------------------------------------------
async def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.common.settings import settings_or_exit
    from backend.db import repository
    from backend.db.engine import session_factory
    from backend.services.components import build_documents, open_database
    from backend.services.ingestion import Identity, NewDocument

    settings = settings_or_exit()
    if args.ray:
        from backend.cli.bulk import import_ray

        import_ray()  # says how to install it, before any work
    engine = await open_database(settings)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            user = await repository.get_user_by_username(session=session, username=args.user)
        if user is None:
            print(
                f"no user {args.user!r}: register it first (POST /auth/register)", file=sys.stderr
            )
            return 2
        documents = await build_documents(settings, sessions)
        started = time.perf_counter()
        counts: dict[str, int] = defaultdict(int)
        chunks = 0
        progress = tqdm(unit="doc", desc="ingesting", disable=args.quiet)
        todo: Iterable[list[NewDocument]] = batches(iter_documents(args.paths), args.batch_size)
        embed = None
        if args.ray:
            from backend.cli.bulk import RayEmbedded

            everything = list(iter_documents(args.paths))
            skip = await documents.unchanged(user=user, documents=everything, scope=args.namespace)
            left = [d for d in everything if Identity.of(d).id not in skip]
            counts["unchanged"] = len(everything) - len(left)
            progress.update(counts["unchanged"])
            ray_embedded = RayEmbedded()
            todo = ray_embedded.batches(
                left,
                settings=settings,
                workers=args.workers,
                batch_size=args.batch_size,
                address=args.address,
            )
            embed = ray_embedded.embed
        async for results in documents.ingest_batches(
            user=user, batches=todo, scope=args.namespace, operator=True, embed=embed
        ):
            for result in results:
                counts[result.status] += 1
                if result.status != "unchanged":
                    chunks += result.chunks
            progress.update(len(results))
            progress.set_postfix(chunks=chunks)
        progress.close()
        seconds = time.perf_counter() - started
        total = sum(counts.values())
        print(
            f"documents: {total} ({counts['created']} created, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged); chunks: {chunks}; seconds: {seconds:.1f}; "
            f"chunks/s: {chunks / seconds if seconds else 0:.1f}"
        )
        await documents.store.close()
        return 0
    finally:
        await engine.dispose()


async def _eval(args: argparse.Namespace) -> int:
    from backend.cli.evaluation import evaluate, parse_fusions, print_report

    report = await evaluate(
        args.dataset,
        split=args.split,
        alphas=[float(a) for a in args.alphas.split(",")],
        fusions=parse_fusions(args.fusions),
        contextual={"yes": [True], "no": [False], "both": [False, True]}[args.contextual],
        corpus_limit=args.corpus_limit,
        query_limit=args.query_limit,
        quiet=args.quiet,
    )
    print_report(report)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=2))
    return 0


async def _eval_answers(args: argparse.Namespace) -> int:
    from backend.cli.answers import (
        evaluate_answers,
        evaluate_cases,
        parse_config,
        print_report,
        write_reports,
    )

    common = {
        "configurations": [parse_config(c) for c in args.config],
        "limit": args.limit,
        "cache": args.cache,
        "judge": args.judge,
        "quiet": args.quiet,
    }
    if (args.dataset is None) == (args.cases is None):
        print("give a DATASET folder or --cases FILE (one of them)", file=sys.stderr)
        return 2
    if args.cases is not None:
        report = await evaluate_cases(args.cases, **common)
    else:
        report = await evaluate_answers(
            args.dataset,
            split=args.split,
            labels=args.labels.split(","),
            label_field=args.label_field,
            answer_field=args.answer_field,
            **common,
        )
    print_report(report)
    for path in await asyncio.to_thread(write_reports, report, args.out):
        print(f"wrote {path}")
    return 0


# --- export-feedback ------------------------------------------------------------------------
async def _export_feedback(args: argparse.Namespace) -> int:
    from datetime import datetime

    from backend.cli.feedback import write_dataset, write_file
    from backend.common.errors import InvalidInput
    from backend.common.settings import settings_or_exit
    from backend.db.engine import session_factory
    from backend.services.components import open_database
    from backend.services.feedback import ExportOptions, FeedbackExport

    try:
        since = datetime.fromisoformat(args.since) if args.since else None
        options = ExportOptions.parse(args.kinds, since, usernames=args.usernames)
    except ValueError as exc:
        print(f"--since {args.since!r}: {exc}", file=sys.stderr)
        return 2
    except InvalidInput as exc:
        print(f"--{exc.field[0] if exc.field else 'kinds'}: {exc.detail}", file=sys.stderr)
        return 2
    settings = settings_or_exit()
    engine = await open_database(settings)
    try:
        export = FeedbackExport(session_factory(engine), settings.secret_key.get_secret_value())
        records = export.records(options)
        if args.hf_dataset:
            counts = await write_dataset(records, args.hf_dataset)
        else:
            counts = await write_file(records, args.out)
    finally:
        await engine.dispose()
    where = args.hf_dataset or args.out or "standard output"
    summary = ", ".join(f"{n} {kind}s" for kind, n in sorted(counts.items())) or "nothing"
    print(f"exported {summary} to {where}", file=sys.stderr)
    return 0


# --- copy-vectors ---------------------------------------------------------------------------
async def _copy_vectors(args: argparse.Namespace) -> int:
    from backend.cli.vectors import CopyError, Stores, copy_vectors
    from backend.common.settings import settings_or_exit

    settings = settings_or_exit()
    stores = Stores(
        embedded=args.embedded or settings.data_dir / "vectors.sqlite3",
        postgres=args.postgres or settings.resolved_vector_database_url,
    )
    try:
        copied = await copy_vectors(args.source, args.target, stores, quiet=args.quiet)
    except CopyError as exc:
        print(f"copy-vectors: {exc}", file=sys.stderr)
        return 2
    print(
        f"copied {copied.records} records in {len(copied.namespaces)} namespaces from the "
        f"{args.source} store to the {args.target} store",
        file=sys.stderr,
    )
    return 0


# --- rotate-keys ----------------------------------------------------------------------------
async def _rotate_keys(args: argparse.Namespace) -> int:
    """Every user's model key re-encrypted under the current KEYS_SECRET (the old one read
    from KEYS_SECRET_PREVIOUS)."""
    from backend.common.errors import UpstreamFailed
    from backend.common.settings import settings_or_exit
    from backend.db.engine import session_factory
    from backend.services.components import open_database
    from backend.services.model_keys import UserModels

    settings = settings_or_exit()
    engine = await open_database(settings)
    try:
        keys = UserModels(settings=settings, sessions=session_factory(engine), catalog=None)
        count = await keys.rotate_all()
    except UpstreamFailed:
        print(
            "rotate-keys: a stored key cannot be decrypted with KEYS_SECRET or "
            "KEYS_SECRET_PREVIOUS; set the secret it was saved under in KEYS_SECRET_PREVIOUS",
            file=sys.stderr,
        )
        return 2
    finally:
        await engine.dispose()
    print(f"re-encrypted {count} model keys under the current KEYS_SECRET", file=sys.stderr)
    return 0


# --- users ----------------------------------------------------------------------------------
async def _users(args: argparse.Namespace) -> int:
    import secrets

    from pydantic import ValidationError

    from backend.api.schemas import UserCreate
    from backend.common.settings import settings_or_exit
    from backend.db import repository
    from backend.db.engine import session_factory
    from backend.services.components import open_database
    from backend.services.security import hash_password

    engine = await open_database(settings_or_exit())
    try:
        async with session_factory(engine)() as session:
            if args.action == "list":
                for listed in await repository.list_users(session=session):
                    flags = [("admin", listed.is_admin), ("disabled", not listed.is_active)]
                    shown = ",".join(flag for flag, on in flags if on)
                    print(f"{listed.username}\t{listed.created_at:%Y-%m-%d}\t{shown}")
                return 0
            user = await repository.get_user_by_username(session=session, username=args.name)
            if args.action == "disable":
                if user is None:
                    print(f"no user {args.name!r}", file=sys.stderr)
                    return 1
                user.is_active = False
                await session.commit()
                print(f"{args.name}: disabled (its tokens and API keys no longer work)")
                return 0
            if user is not None:  # add to an existing user: grant admin, if asked
                if not args.admin:
                    print(f"user {args.name!r} exists", file=sys.stderr)
                    return 1
                user.is_admin = True
                await session.commit()
                print(f"{args.name}: now an admin")
                return 0
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
            generated = password is None
            password = password or secrets.token_urlsafe(12)
            try:
                UserCreate(username=args.name, password=password)
            except ValidationError as exc:
                error = exc.errors()[0]
                print(f"refused: {error['loc'][0]}: {error['msg']}", file=sys.stderr)
                return 2
            created = await repository.create_user(
                session=session, username=args.name, password_hash=hash_password(password)
            )
            created.is_admin = args.admin
            await session.commit()
            print(f"{args.name}: created" + (" (admin)" if args.admin else ""))
            if generated:
                print(f"password: {password}")
            return 0
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(
        prog="python -m backend.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="ingest folders and JSONL files")
    ingest.add_argument("paths", nargs="+", type=Path, help="folders, files, or JSONL files")
    ingest.add_argument("--user", required=True, help="owner of the documents (a username)")
    ingest.add_argument("--namespace", choices=["private", "shared"], default="private")
    ingest.add_argument("--batch-size", type=int, default=64, help="documents per batch")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument(
        "--ray", action="store_true", help="chunk and embed on Ray (requirements-ray.txt)"
    )
    ingest.add_argument("--address", help="a Ray cluster's address (default: start one here)")
    ingest.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="embedding actors on Ray"
    )

    evaluate_ = commands.add_parser("eval", help="measure retrieval on a BEIR-layout dataset")
    evaluate_.add_argument("dataset", type=Path)
    evaluate_.add_argument(
        "--split",
        default="test",
        help="qrels/SPLIT.tsv; 'dev' without such a file: train.tsv, or all.tsv minus test.tsv",
    )
    evaluate_.add_argument(
        "--contextual",
        choices=["yes", "no", "both"],
        default="both",
        help="encode chunks with their title and headings (each choice ingests afresh)",
    )
    evaluate_.add_argument("--alphas", default="0.25,0.5,0.75", help="hybrid alphas to score")
    evaluate_.add_argument("--fusions", default="minmax,convex")
    evaluate_.add_argument(
        "--corpus-limit", type=int, help="keep the relevant passages and this many in all"
    )
    evaluate_.add_argument("--query-limit", type=int)
    evaluate_.add_argument("--json", help="also write the report to this file")
    evaluate_.add_argument("--quiet", action="store_true")

    answers = commands.add_parser(
        "eval-answers", help="score answers through the chat pipeline on a BEIR-layout dataset"
    )
    answers.add_argument("dataset", type=Path, nargs="?", help="a BEIR-layout folder")
    answers.add_argument(
        "--cases", type=Path, help="an export-feedback file: its 👎 cases answered again"
    )
    answers.add_argument("--judge", help="a catalog model judging faithfulness and relevance")
    answers.add_argument("--split", default="test", help="as for eval")
    answers.add_argument("--labels", default="yes,no,maybe", help="the closed set of labels")
    answers.add_argument("--label-field", help="the queries' metadata field holding the label")
    answers.add_argument("--answer-field", help="the metadata field holding the expected text")
    answers.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="a configuration to score (several allowed); keys: model, alpha, top_k, query, "
        "group_by, temperature, max_tokens, rerank (on|off)",
    )
    answers.add_argument("--limit", type=int, help="the first N questions of the split")
    answers.add_argument("--cache", type=Path, default=Path(".eval-cache"), help="answers kept")
    answers.add_argument("--out", type=Path, default=Path("eval-report"), help="report folder")
    answers.add_argument("--quiet", action="store_true")

    export = commands.add_parser(
        "export-feedback", help="users' ratings, preference pairs and cases, as NDJSON"
    )
    export.add_argument("--out", type=Path, help="the NDJSON file (default: standard output)")
    export.add_argument("--hf-dataset", type=Path, help="write a Hugging Face dataset folder")
    export.add_argument("--kinds", default=",".join(FEEDBACK_KINDS))
    export.add_argument("--since", help="only what was said since (ISO 8601, with zone)")
    export.add_argument(
        "--usernames", action="store_true", help="real usernames instead of pseudonyms"
    )

    copy = commands.add_parser(
        "copy-vectors", help="copy the embedded store into PostgreSQL (pgvector) or back"
    )
    copy.add_argument("source", choices=["embedded", "postgres"])
    copy.add_argument("target", choices=["embedded", "postgres"])
    copy.add_argument(
        "--embedded",
        type=Path,
        help="the embedded store's file (default: DATA_DIR/vectors.sqlite3)",
    )
    copy.add_argument(
        "--postgres", help="PostgreSQL URL (default: VECTOR_DATABASE_URL, else DATABASE_URL)"
    )
    copy.add_argument("--quiet", action="store_true")

    commands.add_parser(
        "rotate-keys",
        help="re-encrypt users' model keys under KEYS_SECRET (the old one in KEYS_SECRET_PREVIOUS)",
    )

    users = commands.add_parser("users", help="add, disable or list accounts")
    actions = users.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create an account (or make an existing one admin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="no per-user limits")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    actions.add_parser("disable", help="disable an account").add_argument("name")
    actions.add_parser("list", help="list the accounts")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runners = {
        "ingest": _ingest,
        "eval": _eval,
        "eval-answers": _eval_answers,
        "export-feedback": _export_feedback,
        "copy-vectors": _copy_vectors,
        "rotate-keys": _rotate_keys,
        "users": _users,
    }
    return asyncio.run(runners[args.command](args))
