"""The report as a document: sections of paragraphs, tables, images and lists.

``tinyprune.report.render`` builds the sections once from the report; report.md
(``to_markdown`` here) and report.html (``tinyprune.report.html``) are two writers of the same
sections, so a fact added to one appears in the other. Text may carry two inline marks, `code`
and **bold**, which both writers understand.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric_from: int = 1  # columns from here on are right-aligned in the HTML


@dataclass(frozen=True)
class Image:
    alt: str
    path: str  # a file written beside the report (the HTML embeds it)


@dataclass(frozen=True)
class Note:
    text: str  # a paragraph of explanation (set smaller in the HTML)


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Section:
    key: str  # stable name the HTML writer hangs its plots on
    title: str  # "" for the untitled sections at the top
    blocks: list = field(default_factory=list)  # str (a paragraph; lines split by "\n"), Table, Image, Note, Bullets


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def block_markdown(block) -> list[str]:
    if isinstance(block, Table):
        return (["| " + " | ".join(_cell(h) for h in block.header) + " |", "|" + "---|" * len(block.header)]
                + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows])
    if isinstance(block, Image):
        return [f"![{block.alt}]({block.path})"]
    if isinstance(block, Note):
        return block.text.split("\n")
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    return str(block).split("\n")


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        if section.title:
            lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [*block_markdown(block), ""]
    return "\n".join(lines)
