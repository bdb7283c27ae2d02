"""Render report sections to Markdown (images linked) and to one self-contained HTML page (PNG
images embedded as base64 data URIs, tables as HTML, CSS inline: it opens offline, mailed alone)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from .tables import Table, md_escape

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #0072B2; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0 .3em; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f0f4f8; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { font-size: 0.85em; color: #555; }
"""


@dataclass(frozen=True)
class FigureRef:
    """A figure written to disk: its PNG (embedded in HTML), its SVG (linked from Markdown)."""

    png: Path
    svg: Path
    caption: str


@dataclass(frozen=True)
class Section:
    """One heading with its text, figures and tables, in that order."""

    title: str
    level: int = 2
    paragraphs: tuple[str, ...] = ()
    figures: tuple[FigureRef, ...] = ()
    tables: tuple[Table, ...] = ()


def render_markdown(title: str, sections: list[Section], root: Path) -> str:
    """The report as Markdown; image links are relative to `root` (the report folder)."""
    out = [f"# {md_escape(title)}", ""]
    for section in sections:
        out += ["#" * section.level + " " + md_escape(section.title), ""]
        for text in section.paragraphs:
            out += [md_escape(text), ""]
        for fig in section.figures:
            png, svg = fig.png.relative_to(root).as_posix(), fig.svg.relative_to(root).as_posix()
            caption = md_escape(fig.caption)
            out += [f"![{caption}]({png})", "", f"*{caption}* ([SVG]({svg}))", ""]
        for table in section.tables:
            out += [table.to_markdown(), ""]
    return "\n".join(out).rstrip() + "\n"


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_html(title: str, sections: list[Section]) -> str:
    """The report as one HTML page with every image inlined; nothing is fetched when it opens."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        tag = f"h{min(section.level, 6)}"
        body.append(f"<{tag}>{html.escape(section.title)}</{tag}>")
        body += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
        for fig in section.figures:
            caption = html.escape(fig.caption)
            body.append(f"<figure><img src=\"{_data_uri(fig.png)}\" alt=\"{caption}\">"
                        f"<figcaption>{caption}</figcaption></figure>")
        body += [table.to_html() for table in section.tables]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
