"""A tiny document model (headings, paragraphs, a banner, tables, figures, lists) rendered
to Markdown and to self-contained HTML: inline CSS, every figure an SVG data URI, all text
escaped."""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class _Block:
    kind: str  # h | p | banner | table | figure | list | link
    text: str = ""
    level: int = 0
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    png: Path | None = None
    svg: Path | None = None


class Document:
    """A tiny document model rendered to Markdown and to self-contained HTML."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[_Block] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(_Block("h", text, level))

    def p(self, text: str) -> None:
        self.blocks.append(_Block("p", text))

    def banner(self, severity: str, text: str) -> None:
        self.blocks.append(_Block("banner", text, headers=[severity]))

    def table(self, headers: list[str], rows: list[list[Any]], caption: str = "") -> None:
        cells = [["" if c is None else str(c) for c in r] for r in rows]
        self.blocks.append(_Block("table", caption, headers=headers, rows=cells))

    def figure(self, png: Path, svg: Path, caption: str) -> None:
        self.blocks.append(_Block("figure", caption, png=png, svg=svg))

    def link(self, text: str, target: str) -> None:
        """A paragraph linking a file beside the report (``target``: relative to the report's folder)."""
        self.blocks.append(_Block("link", text, headers=[target]))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(_Block("list", rows=[[i] for i in items]))

    def markdown(self, base: Path) -> str:
        """The document as Markdown; figure paths relative to ``base``."""
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "h":
                out += [f"{'#' * (b.level + 1)} {_md_inline(b.text)}", ""]
            elif b.kind == "p":
                out += [_md_inline(b.text), ""]
            elif b.kind == "banner":
                out += [f"> **{_md_inline(b.text)}**", ""]
            elif b.kind == "table":
                out += _md_table(b)
            elif b.kind == "figure":
                png, svg = os.path.relpath(b.png, base), os.path.relpath(b.svg, base)
                out += [f"![{_md_inline(b.text)}]({png})", "", f"*{_md_inline(b.text)}* ([SVG]({svg}))", ""]
            elif b.kind == "list":
                out += [f"- {_md_inline(r[0])}" for r in b.rows] + [""]
            elif b.kind == "link":
                out += [f"[{_md_inline(b.text)}]({b.headers[0]})", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        """The document as one HTML page that references nothing outside itself."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b.kind == "h":
                lvl = min(b.level + 1, 6)
                body.append(f"<h{lvl}>{e(b.text)}</h{lvl}>")
            elif b.kind == "p":
                body.append(f"<p>{e(b.text)}</p>")
            elif b.kind == "banner":
                body.append(f'<div class="banner {e(b.headers[0])}"><strong>{e(b.text)}</strong></div>')
            elif b.kind == "table":
                body.append(_html_table(b))
            elif b.kind == "figure":
                data = base64.b64encode(Path(b.svg).read_bytes()).decode()
                body.append(f'<figure><img alt="{e(b.text)}" src="data:image/svg+xml;base64,{data}">'
                            f"<figcaption>{e(b.text)}</figcaption></figure>")
            elif b.kind == "link":
                body.append(f'<p><a href="{e(b.headers[0])}">{e(b.text)}</a></p>')
            elif b.kind == "list":
                body.append("<ul>" + "".join(f"<li>{e(r[0])}</li>" for r in b.rows) + "</ul>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")


#: A number as the report prints it: optionally signed, thousands commas, exponent, an interval
#: in brackets or parentheses after it, or "± stderr" ("-" is a missing value).
_NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?%?( ?[(\[][^)\]]*[)\]]| ± [-+.\de]+)?$|^-$|^$")


def numeric_columns(b: _Block) -> list[bool]:
    """Per column: every cell a number (or missing) and at least one a number: right-aligned."""
    out = []
    for i in range(len(b.headers)):
        cells = [r[i].strip() for r in b.rows if i < len(r)]
        out.append(bool(cells) and all(_NUMBER.match(c) for c in cells) and any(c not in ("", "-") for c in cells))
    return out


def _md_table(b: _Block) -> list[str]:
    out = [f"*{_md_inline(b.text)}*", ""] if b.text else []
    if not b.rows:
        return out + ["(none)", ""]
    out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
    out.append("|" + "|".join("---:" if n else "---" for n in numeric_columns(b)) + "|")
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
    return out + [""]


def _html_table(b: _Block) -> str:
    e = html.escape
    if not b.rows:
        return f"<p>{e(b.text + ': ' if b.text else '')}(none)</p>"
    # the caption as a paragraph above, as wide as the page (a <caption> is as narrow as its table);
    # a table wider than the page scrolls inside its box instead of widening the page
    cap = f'<p class="caption">{e(b.text)}</p>' if b.text else ""
    num = numeric_columns(b)
    head = "".join(f'<th class="num">{e(h)}</th>' if n else f"<th>{e(h)}</th>" for h, n in zip(b.headers, num))
    rows = "".join("<tr>" + "".join(f'<td class="num">{e(c)}</td>' if i < len(num) and num[i] else f"<td>{e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in b.rows)
    return f'<div class="table">{cap}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


_CSS = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
div.table{overflow-x:auto;margin:1rem 0} p.caption{font-style:italic;margin:.3rem 0}
table{border-collapse:collapse;font-size:.85rem;width:max-content}
th,td{border:1px solid #bbb;padding:.2rem .5rem;text-align:left;vertical-align:top;max-width:24rem;
overflow-wrap:anywhere}
th{background:#eee}
td.num,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
figure{margin:1rem 0} figure img{width:100%;height:auto} figcaption{font-style:italic;font-size:.9rem}
.banner{padding:1rem;margin:1rem 0;border:3px solid;font-size:1.05rem}
.banner.simulated{background:#fde8e8;border-color:#c0392b;color:#7b1d1d}
.banner.measured{background:#e8f6ea;border-color:#2e7d32}
.banner.none{background:#eee;border-color:#666}
""".strip()


def _md_inline(text: str) -> str:
    return text.replace("\n", " ")


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
