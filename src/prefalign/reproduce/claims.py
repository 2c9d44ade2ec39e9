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
import json
import os
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


def run_claim(name: str, out_dir: Path, quick: bool = False) -> ClaimResult:
    if name not in CLAIMS:
        raise ValueError(f"unknown reproduction {name!r}; known: {sorted(CLAIMS)}")
    c = CLAIMS[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = c.run(out_dir, quick)
    seconds = time.perf_counter() - start
    write_report(c, result, out_dir, seconds, quick)
    return result


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(c: Claim, r: ClaimResult, out_dir: Path, seconds: float, quick: bool) -> None:
    record = {"name": c.name, "paper": c.paper, "paper_claim": c.paper_claim, "seconds": round(seconds, 1),
              "quick": quick, **asdict(r), "verdict": r.verdict.value}
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
