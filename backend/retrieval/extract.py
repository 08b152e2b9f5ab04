"""Text from uploaded files: plain text, Markdown, HTML (visible text and title) and PDF."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from typing import ClassVar


class UnreadableFile(ValueError):
    """The upload is not a file of the kind it claims, or holds no text."""


class _TextOfHtml(HTMLParser):
    SKIP: ClassVar[set[str]] = {"script", "style", "noscript", "template", "head"}
    BLOCKS: ClassVar[set[str]] = {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "section",
        "article",
        "pre",
        "blockquote",
        "title",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self.skipping:
            self.parts.append(data)


def _collapse(text: str) -> str:
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


SUPPORTED = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


def kind_of(filename: str, content_type: str | None) -> str | None:
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix in SUPPORTED:
        return SUPPORTED[suffix]
    return {
        "text/plain": "text",
        "text/markdown": "markdown",
        "text/html": "html",
        "application/pdf": "pdf",
    }.get((content_type or "").split(";")[0].strip())


def extract_text(data: bytes, kind: str) -> tuple[str, dict[str, str | int]]:
    """The text of a file and what was learnt about it (title, pages)."""
    if kind == "pdf":
        return _pdf_text(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not UTF-8 text (byte {exc.start})") from exc
    if "\x00" in text:
        raise UnreadableFile("binary data, not text")
    if kind == "html":
        parser = _TextOfHtml()
        parser.feed(text)
        parser.close()
        info: dict[str, str | int] = (
            {"title": " ".join(parser.title.split())} if parser.title.strip() else {}
        )
        return _collapse("".join(parser.parts)), info
    return text.replace("\r\n", "\n").strip(), {}


def _pdf_text(data: bytes) -> tuple[str, dict[str, str | int]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.startswith(b"%PDF"):
        raise UnreadableFile("not a PDF file")
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableFile(f"the PDF could not be read ({exc})") from exc
    info: dict[str, str | int] = {"pages": len(pages)}
    if title.strip():
        info["title"] = title.strip()
    return "\n\n".join(p.strip() for p in pages if p.strip()), info
