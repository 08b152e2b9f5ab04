"""Tooling: the command line (`python -m backend.cli ingest|eval|users`), the retrieval
evaluation, bulk ingestion on Ray and the readers of documents on disk. It drives the same
services as the API, never the API itself."""

from backend.cli.commands import main

__all__ = ["main"]
