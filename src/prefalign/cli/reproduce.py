"""`prefalign reproduce NAME | all | --list`: rerun a paper's claim on the CPU testbed, with a verdict."""

from __future__ import annotations

import sys
from pathlib import Path

DESCRIPTION = """Rerun a paper's claim on a CPU testbed. Each claim writes result.json, report.md and
report.html (with its plots) to OUT/NAME and a verdict: PASS, FAIL, or INCONCLUSIVE when the
testbed is too small to tell. `all` runs every claim (finished ones are kept and reused) and
writes OUT/summary.md, the README's "Reproductions" table. --quick is the small setting tests use."""


def claim_rows(out: Path) -> list[dict]:
    from prefalign.reproduce.claims import CLAIMS, read_result

    rows = []
    for name in sorted(CLAIMS):
        c, done = CLAIMS[name], read_result(out / name)
        last = "-" if done is None else f"{done['verdict']}{' (quick)' if done.get('quick') else ''}"
        rows.append({"name": name, "paper": c.paper, "claim": c.paper_claim, "last verdict": last})
    return rows


def print_list(out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = claim_rows(out)
    table = Table(title=f"{len(rows)} reproductions (last verdicts read from {out})")
    for col in ("name", "paper", "claim", "last verdict"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["paper"], r["claim"], r["last verdict"])
    Console(width=200, markup=False).print(table)


def run_one(name: str, out: Path, quick: bool, force: bool) -> dict:
    """Run one claim into out/name; an existing finished result is an error unless force."""
    from prefalign.reproduce.claims import read_result, run_claim

    done = read_result(out / name)
    if done is not None and not force:
        raise ValueError(f"{out / name} already holds a finished result of {name} ({done['verdict']}, "
                         f"{'quick' if done.get('quick') else 'full'} setting); pass --force to run it again, "
                         f"or --out another folder")
    print(f"reproduce {name} ({'quick' if quick else 'full'} setting) -> {out / name}", flush=True)
    result = run_claim(name, out / name, quick=quick)
    print(f"{name}: {result.verdict.value}. {result.measured}\n  {result.reason}", flush=True)
    return read_result(out / name)


def run_all(out: Path, quick: bool, force: bool) -> int:
    """Every claim in name order; a claim that raises is reported and the rest still run."""
    from prefalign.reproduce.claims import CLAIMS, read_result, summary_table, write_atomic

    records, errors = [], {}
    for name in sorted(CLAIMS):
        done = read_result(out / name)
        if done is not None and not force:
            print(f"{name}: kept the finished result in {out / name} ({done['verdict']}); --force reruns it")
            records.append(done)
            continue
        try:
            records.append(run_one(name, out, quick, force=True))
        except Exception as err:  # one claim's crash must not lose the others' results
            errors[name] = f"{type(err).__name__}: {err}"
            print(f"{name}: error: {errors[name]}", file=sys.stderr, flush=True)
    text = summary_table(records)
    if errors:
        text += "\nNot finished (error): " + "; ".join(f"{k}: {v}" for k, v in errors.items()) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.md", text)
    print(text + f"\nwrote {out / 'summary.md'}")
    return 1 if errors else 0


def cmd_reproduce(args) -> int:
    from prefalign.reproduce.claims import CLAIMS, load_claims

    failed = load_claims()
    for module, err in failed.items():  # counted and shown, never silently dropped
        print(f"reproduce: module {module} failed to import, its claims are missing: {err}", file=sys.stderr)
    out = Path(args.out)
    if args.list:
        print_list(out)
        return 1 if failed else 0
    if not args.name:
        raise ValueError(f"name a reproduction, `all`, or pass --list; known: {', '.join(sorted(CLAIMS))}")
    if args.name == "all":
        return max(run_all(out, args.quick, args.force), 1 if failed else 0)
    if args.name not in CLAIMS:
        raise ValueError(f"unknown reproduction {args.name!r}; known: {', '.join(sorted(CLAIMS))} (or `all`)")
    run_one(args.name, out, args.quick, args.force)
    return 0


def add_commands(sub) -> None:
    import argparse

    p = sub.add_parser("reproduce", help="rerun a paper's claim on a CPU testbed and give a verdict",
                       description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("name", nargs="?", metavar="NAME", help="a reproduction (see --list), or `all`")
    p.add_argument("--list", action="store_true", help="list the reproductions with their last verdict in --out")
    p.add_argument("--quick", action="store_true", help="the small, fast setting (what the tests run)")
    p.add_argument("--out", default="runs/reproduce", help="results folder; each claim writes OUT/NAME")
    p.add_argument("--force", action="store_true", help="rerun a claim whose finished result is already in OUT/NAME")
    p.set_defaults(fn=cmd_reproduce)
