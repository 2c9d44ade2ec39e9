"""The registry of reproducible claims and the one report format they share.

A claim is a function `run(out_dir: Path, quick: bool) -> ClaimResult`, registered by name with
the paper it comes from and the shape the paper reports. It writes whatever it measures under
out_dir (plots as PNG); `run_claim` then writes report.md, report.html and result.json there.
The verdict compares the measured shape with the paper's: PASS, FAIL, or INCONCLUSIVE when the
testbed cannot tell (too little spread, too few samples); a claim never turns INCONCLUSIVE into PASS.
`quick=True` is the small setting the tests run; the README's numbers come from quick=False.
"""

from __future__ import annotations

import html
import importlib
import json
import os
import pkgutil
import sys
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable


class Verdict(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass
class ClaimResult:
    verdict: Verdict
    measured: str  # one line: what we measured, with numbers
    reason: str  # why this verdict: the rule and the values it read
    numbers: dict = field(default_factory=dict)  # everything measured, JSON-serialisable
    plots: list[str] = field(default_factory=list)  # file names under out_dir
    table: list[dict] = field(default_factory=list)  # optional rows shown in the report


@dataclass(frozen=True)
class Claim:
    name: str
    run: Callable[[Path, bool], ClaimResult]
    paper: str  # title and arXiv id
    paper_claim: str  # the paper's number or shape, one line


CLAIMS: dict[str, Claim] = {}


def claim(name: str, paper: str, paper_claim: str):
    def wrap(fn):
        if name in CLAIMS:
            raise ValueError(f"claim {name!r} is registered twice")
        CLAIMS[name] = Claim(name, fn, paper, paper_claim)
        return fn
    return wrap


def load_claims() -> dict[str, str]:
    """Import every module of this package so that each registers its claims (no shared list).

    Returns {module: error} for modules that failed to import: one helper's broken module must
    not hide everyone else's claims, and the caller reports each failure (never a silent skip)."""
    # the package object without an import statement: importing it here would be an import circle
    # (its __init__ imports this module); it is always loaded before any of its submodules
    package = sys.modules[__name__.rpartition(".")[0]]
    failed = {}
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception as err:  # reported by the caller with the module's name
            failed[info.name] = f"{type(err).__name__}: {err}"
    return failed


def read_result(out_dir: Path) -> dict | None:
    """The finished result.json of a claim folder, or None when the claim has not finished there."""
    path = Path(out_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it or rerun with --force") from err


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def table_cell(text) -> str:
    """One Markdown table cell: pipes escaped, newlines flattened."""
    return " ".join(str(text).split()).replace("|", "\\|")


SUMMARY_COLUMNS = ("claim", "command", "paper's number or shape", "ours", "verdict", "time on 2 cores")


def summary_table(records: list[dict]) -> str:
    """The README's "Reproductions" table: one row per result.json record (a claim's finished run)."""
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for r in records:
        quick = " --quick" if r.get("quick") else ""
        # CPU seconds next to wall time: on a loaded machine the wall time mostly counts waiting
        cpu = r.get("cpu_seconds", r.get("numbers", {}).get("cpu_seconds"))
        time_cell = format_seconds(r["seconds"]) + (f" ({format_seconds(cpu)} CPU)" if cpu is not None else "")
        time_cell += " (quick setting)" if r.get("quick") else ""
        cells = [r["name"], f"`prefalign reproduce {r['name']}{quick}`", r["paper_claim"] + f" ({r['paper']})",
                 r["measured"], f"**{r['verdict']}**", time_cell]
        lines.append("| " + " | ".join(table_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run_claim(name: str, out_dir: Path, quick: bool = False) -> ClaimResult:
    if name not in CLAIMS:
        raise ValueError(f"unknown reproduction {name!r}; known: {sorted(CLAIMS)}")
    c = CLAIMS[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = c.run(out_dir, quick)
    seconds = time.perf_counter() - start
    # CPU seconds too: on a shared machine wall time also counts the waits for other processes
    write_report(c, result, out_dir, seconds, quick, cpu_seconds=time.process_time() - cpu_start)
    return result


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(c: Claim, r: ClaimResult, out_dir: Path, seconds: float, quick: bool,
                 cpu_seconds: float | None = None) -> None:
    record = {"name": c.name, "paper": c.paper, "paper_claim": c.paper_claim, "seconds": round(seconds, 1),
              "quick": quick, "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1), **asdict(r), "verdict": r.verdict.value}
    write_atomic(out_dir / "result.json", json.dumps(record, indent=2, default=str))
    lines = [f"# {c.name}: {r.verdict.value}", "", f"Paper: {c.paper}", "", f"Paper's claim: {c.paper_claim}", "",
             f"Measured: {r.measured}", "", f"Verdict: **{r.verdict.value}**. {r.reason}", "",
             f"Time: {seconds:.0f} s{' (quick setting)' if quick else ''}", ""]
    if r.table:
        keys = list(r.table[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in r.table] + [""]
    lines += [f"![{p}]({p})" for p in r.plots]
    write_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
    esc = html.escape
    body = [f"<h1>{esc(c.name)}: {esc(r.verdict.value)}</h1>", f"<p>Paper: {esc(c.paper)}</p>",
            f"<p>Paper's claim: {esc(c.paper_claim)}</p>", f"<p>Measured: {esc(r.measured)}</p>",
            f"<p>Verdict: <b>{esc(r.verdict.value)}</b>. {esc(r.reason)}</p>"]
    if r.table:
        keys = list(r.table[0])
        body.append("<table><tr>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{esc(str(row.get(k, '')))}</td>" for k in keys) + "</tr>" for row in r.table)
            + "</table>")
    body += [f'<img src="{esc(p)}" alt="{esc(p)}">' for p in r.plots]
    write_atomic(out_dir / "report.html", "<html><body>" + "\n".join(body) + "</body></html>\n")
