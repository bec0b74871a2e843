"""A small text document written both as Markdown (on disk) and as HTML (in report.html).

The report's tables and texts are generated, so one structure rendered twice keeps the two
forms identical without a Markdown library.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1e293b; max-width: 80em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #cbd5e1; padding: 0.2em 0.45em; }
th { background: #f1f5f9; text-align: center; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.na { color: #64748b; text-align: center; }
td.missing, td.failed { color: #b91c1c; text-align: center; font-style: italic; }
p.note, li.note { color: #475569; font-size: 0.85em; }
"""
# Cell texts that are not numbers; HTML marks them so they never read as values.
MARKERS = {"NA": "na", "missing": "missing", "failed": "failed"}


@dataclasses.dataclass
class Block:
    kind: str  # heading, paragraph, note, bullets, table
    text: str = ""
    level: int = 2
    items: Sequence[str] = ()
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()


@dataclasses.dataclass
class Document:
    title: str
    blocks: list[Block] = dataclasses.field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Block("heading", text, level=level))

    def paragraph(self, text: str) -> None:
        self.blocks.append(Block("paragraph", text))

    def note(self, text: str) -> None:
        self.blocks.append(Block("note", text))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(Block("bullets", items=list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(Block("table", headers=list(headers), rows=[list(r) for r in rows]))

    def extend(self, other: Document) -> None:
        self.blocks.extend(other.blocks)

    def to_markdown(self) -> str:
        parts = [f"# {self.title}"]
        for block in self.blocks:
            if block.kind == "heading":
                parts.append(f"{'#' * block.level} {block.text}")
            elif block.kind in ("paragraph", "note"):
                parts.append(block.text)
            elif block.kind == "bullets":
                parts.append("\n".join(f"- {item}" for item in block.items))
            elif block.kind == "table":
                parts.append(markdown_table(block.headers, block.rows))
        return "\n\n".join(parts) + "\n"

    def to_html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            if block.kind == "heading":
                level = min(block.level, 6)
                body.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
            elif block.kind == "paragraph":
                body.append(f"<p>{html.escape(block.text)}</p>")
            elif block.kind == "note":
                body.append(f'<p class="note">{html.escape(block.text)}</p>')
            elif block.kind == "bullets":
                items = "".join(f"<li>{html.escape(item)}</li>" for item in block.items)
                body.append(f"<ul>{items}</ul>")
            elif block.kind == "table":
                body.append(html_table(block.headers, block.rows))
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|"
        + "|".join("---:" if _numeric_column(rows, i) else "---" for i in range(len(headers)))
        + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            text = str(value)
            css = MARKERS.get(text, "num" if _is_number(text) else "")
            attr = f' class="{css}"' if css else ""
            cells.append(f"<td{attr}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _is_number(text: str) -> bool:
    try:
        float(text.replace("×", ""))
    except ValueError:
        return False
    return True


def _numeric_column(rows: Sequence[Sequence[str]], index: int) -> bool:
    values = [str(row[index]) for row in rows if str(row[index]) not in MARKERS]
    return bool(values) and all(_is_number(v) for v in values)
