"""A report as a list of blocks (headings, paragraphs, tables, images), rendered twice: Markdown that links
its PNGs, and one self-contained HTML file with the PNGs embedded as data URIs (no network, no scripts).

Paragraph and cell text may use `code` spans; nothing else is interpreted."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path  # a PNG file; Markdown links it relative to the report, HTML embeds it
    caption: str


@dataclass
class Gallery:
    images: list[Image]  # shown side by side, three to a line


Block = Heading | Paragraph | Table | Image | Gallery


def to_markdown(blocks: list[Block], folder: Path) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Table):
            def cells(values):
                return "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in values) + " |"
            out.append("\n".join([cells(block.header), cells(["---"] * len(block.header)),
                                  *(cells(row) for row in block.rows)]))
        elif isinstance(block, Image):
            out.append(f"![{block.caption}]({Path(block.path).relative_to(folder).as_posix()})\n\n*{block.caption}*")
        elif isinstance(block, Gallery):  # a table of images: captions as the header, three per line
            for start in range(0, len(block.images), 3):
                line = block.images[start:start + 3]
                out.append(to_markdown([Table([image.caption for image in line],
                                              [[f"![{image.caption}]({Path(image.path).relative_to(folder).as_posix()})"
                                                for image in line]])], folder).rstrip("\n"))
    return "\n\n".join(out) + "\n"


STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; } h2 { border-bottom: 1px solid #d0d7de; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfbfc; }
code { background: #eff1f3; padding: 1px 4px; border-radius: 4px; font-size: 90%; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; } .gallery figure { width: 32%; margin: 0; }
figcaption { font-size: 13px; color: #57606a; }
"""


def _inline(text: str) -> str:
    """HTML-escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _figure(image: Image) -> str:
    data = base64.b64encode(Path(image.path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(image.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline(image.caption)}</figcaption></figure>")


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            body.append(_figure(block))
        elif isinstance(block, Gallery):
            body.append('<div class="gallery">' + "".join(_figure(image) for image in block.images) + "</div>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
