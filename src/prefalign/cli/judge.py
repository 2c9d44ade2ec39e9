"""`prefalign judge`: label a file of candidate responses into preference pairs with any judge."""

from __future__ import annotations

import json
from pathlib import Path


FORMAT = ('candidates: one row per prompt, {"prompt": str, "responses": [str | {"text": str}, ...], '
          '"reference": str (optional), "id": any (optional)}; JSONL/JSON/CSV/Parquet, gzip allowed')


def parse_judge_args(items: list[str]) -> dict:
    """key=value pairs; values read as YAML scalars/lists (0.5, true, [a, b]), else kept as text."""
    from prefalign.config import parse_key_values

    return parse_key_values(items, "--judge-arg")


def cmd_judge(args) -> int:
    # imported here: the judges pull in torch, which `prefalign --help` should not pay for
    from prefalign.judges import make_judge
    from prefalign.judges.labeling import label_pairs, read_candidates

    rows = read_candidates(args.candidates)
    judge = make_judge(args.judge, **parse_judge_args(args.judge_arg))
    pairs, report = label_pairs(judge, rows, args.mode, args.batch_size, progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    stats = {"candidates": str(args.candidates), "judge": args.judge, "judge_args": args.judge_arg or [],
             "labeling": report.as_dict(), "verdicts": judge.stats.as_dict()}
    if hasattr(judge, "extra_stats"):
        stats["judge_extra"] = judge.extra_stats()
    stats_path = Path(args.stats) if args.stats else out.with_suffix(".stats.json")
    stats_path.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    v, lab = stats["verdicts"], stats["labeling"]
    print(f"{lab['pairs']} pairs from {lab['rows']} rows -> {out}; dropped rows: {lab['dropped']} "
          f"{lab['dropped_by_reason']}; missing verdicts: {v['missing']} of {v['missing'] + v['verdicts']} "
          f"{v['missing_by_reason']}; stats -> {stats_path}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("judge", help="label candidate responses into preference pairs with a judge",
                       description="Score or compare each prompt's candidate responses with a judge and write "
                                   "best-vs-worst preference pairs (JSONL) and a stats JSON.", epilog=FORMAT)
    p.add_argument("candidates", help="candidates file (see below)")
    p.add_argument("--judge", required=True, help="a registered judge (rubric, follow_up, relevance, principle, consensus, callable, "
                        "...); an unknown name lists them all")
    p.add_argument("--judge-arg", action="append", metavar="KEY=VALUE",
                   help="judge constructor argument, repeatable (e.g. path=models/judge, temperature=0.5)")
    p.add_argument("--out", required=True, help="output pairs JSONL (prompt, chosen, rejected, scores)")
    p.add_argument("--stats", help="stats JSON path (default: OUT with suffix .stats.json)")
    p.add_argument("--mode", choices=("auto", "score", "compare"), default="auto",
                   help="score each response (best vs worst) or compare all pairs; auto: score when the judge can")
    p.add_argument("--batch-size", type=int, default=16, help="items per judge call")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_judge)
