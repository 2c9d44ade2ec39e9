"""A diagnostics report: sections written as Markdown, self-contained HTML, JSON and PNG files.

A section is a title, a short Markdown text, an optional table (a list of row dicts), PNG figures
and a JSON-able dict of its numbers. Adding one is one call:

    report = Report("Diagnostics of runs/dpo", out_dir)
    png = report.figure_path("token_shift.png")      # where a plot function should draw
    plot_token_shift(result, png)
    report.add("Token distribution shift", "Most positions are unshifted ...", table=rows,
               figures=[png], data=result)
    report.write()

write() builds report.md, report.html (PNGs embedded as base64, inline CSS, no external
assets), report.json and the PNGs in a staging folder next to `out_dir`, then swaps it into place,
so a reader never sees a half-written report and a failed run leaves the previous one intact.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str
    text: str = ""
    table: list[dict] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def jsonable(value):
    """Plain JSON values: tensors and numpy numbers become lists / floats, NaN and inf become None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def columns_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def markdown_table(rows: list[dict]) -> str:
    cols = columns_of(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)).replace("|", "\\|").replace("\n", " ") for c in cols) + " |"
              for r in rows]
    return "\n".join(lines)


def inline_html(text: str) -> str:
    """Escape, then the inline Markdown the sections use: **bold**, *italic*, `code`."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?!\w)", r"<em>\1</em>", out)


def markdown_html(text: str) -> str:
    """The small Markdown subset of section texts: paragraphs and "- " bullet lists."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if lines and all(line.lstrip().startswith(("- ", "* ")) for line in lines):
            items = "".join(f"<li>{inline_html(line.lstrip()[2:])}</li>" for line in lines)
            blocks.append(f"<ul>{items}</ul>")
        elif block.strip():
            blocks.append(f"<p>{inline_html(' '.join(lines))}</p>")
    return "\n".join(blocks)


def html_table(rows: list[dict]) -> str:
    cols = columns_of(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd}h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}
code{background:#f4f4f4;padding:0 .2em}nav li{margin:.1em 0}.meta{color:#666;font-size:.9em}"""


class Report:
    def __init__(self, title: str, out_dir: str | Path):
        self.title, self.out_dir = title, Path(out_dir)
        self.sections: list[Section] = []
        self.created = time.strftime("%Y-%m-%d %H:%M:%S")
        self.staging = self.out_dir.parent / f".{self.out_dir.name}.staging-{os.getpid()}"
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)

    def figure_path(self, name: str) -> Path:
        """Where to draw a figure that will belong to this report (a PNG file name, unique)."""
        if not re.fullmatch(r"[\w.-]+\.png", name):
            raise ValueError(f"figure names must be plain file names ending in .png, got {name!r}")
        return self.staging / name

    def add(self, title: str, text: str = "", table: list[dict] | None = None, figures: list | None = None,
            data: dict | None = None) -> Section:
        """Append a section. Figures are PNG paths (from figure_path, or anywhere: copied in)."""
        paths = []
        for fig in figures or []:
            fig = Path(fig)
            if not fig.is_file():
                raise FileNotFoundError(f"section {title!r}: figure {fig} was not written")
            if fig.parent != self.staging:
                shutil.copyfile(fig, self.figure_path(fig.name))
            paths.append(self.staging / fig.name)
        section = Section(title, text, list(table or []), paths, jsonable(data or {}))
        self.sections.append(section)
        return section

    def markdown(self) -> str:
        parts = [f"# {self.title}", f"_Created {self.created}._", ""]
        parts += [f"- [{s.title}](#{anchor(s.title)})" for s in self.sections]
        for s in self.sections:
            parts += ["", f"## {s.title}", "", s.text.strip()]
            if s.table:
                parts += ["", markdown_table(s.table)]
            parts += [f"\n![{p.stem}]({p.name})" for p in s.figures]
        return "\n".join(parts) + "\n"

    def html(self) -> str:
        toc = "".join(f'<li><a href="#{anchor(s.title)}">{html.escape(s.title)}</a></li>' for s in self.sections)
        body = []
        for s in self.sections:
            body.append(f'<h2 id="{anchor(s.title)}">{html.escape(s.title)}</h2>')
            body.append(markdown_html(s.text))
            if s.table:
                body.append(html_table(s.table))
            for p in s.figures:
                data = base64.b64encode(p.read_bytes()).decode("ascii")
                body.append(f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}">')
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f'<p class="meta">Created {self.created}.</p><nav><ul>{toc}</ul></nav>' + "\n".join(body)
                + "</body></html>\n")

    def as_json(self) -> dict:
        return {"title": self.title, "created": self.created,
                "sections": [{"title": s.title, "text": s.text, "table": jsonable(s.table),
                              "figures": [p.name for p in s.figures], "data": s.data} for s in self.sections]}

    def write(self) -> Path:
        """Write every file into the staging folder, then swap it in for `out_dir`."""
        (self.staging / "report.md").write_text(self.markdown(), encoding="utf-8")
        (self.staging / "report.html").write_text(self.html(), encoding="utf-8")
        (self.staging / "report.json").write_text(json.dumps(self.as_json(), indent=1, allow_nan=False),
                                                  encoding="utf-8")
        used = {p.name for s in self.sections for p in s.figures}
        for stray in self.staging.glob("*.png"):
            if stray.name not in used:
                stray.unlink()  # drawn but never added to a section
        old = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}"
        if self.out_dir.exists():
            self.out_dir.rename(old)
        self.staging.rename(self.out_dir)
        if old.exists():
            shutil.rmtree(old)
        return self.out_dir

    def discard(self) -> None:
        """Drop the staging folder (a run that failed before write())."""
        shutil.rmtree(self.staging, ignore_errors=True)


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
