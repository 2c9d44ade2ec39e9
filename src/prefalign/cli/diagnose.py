"""`prefalign diagnose`: a run folder (or --model/--reference/--data) in, a report folder out."""

from __future__ import annotations

import json
from pathlib import Path

from prefalign.recipes.run_folders import check_report_dir, load_policy


EPILOG = """examples:
  prefalign diagnose runs/dpo
  prefalign diagnose --model runs/dpo/final --reference base/ --data pairs.jsonl --judge callable ...
  prefalign diagnose runs/dpo --judge NAME --judge-arg path=rm/ --judge-arg temperature=1.0
  prefalign diagnose runs/dpo --checkpoints 3 --no-token-shift     # cap the over-optimisation cost

sections: ranking accuracy, hardest pairs, sample KL, token distribution shift, win rate and judge
calibration (with --judge), preference factors, likelihood over-optimisation per checkpoint (run
folders), reward over-optimisation (run folder + a judge with score()), training curves; for an
online run (a run folder with rounds/): the online rounds (per-round judge score, KL, win rate vs
the initial policy, length, top-k entropy, throughput; final round vs initial, paired), and the
model sections only with --model RUN/final.

output: report.md, report.html (self-contained), report.json and PNGs in --output-dir
(default RUN/diagnostics, or ./diagnostics with --model)."""


def add_commands(sub) -> None:
    p = sub.add_parser("diagnose", help="report whether alignment worked: ranking, KL, token shift, win rate, factors, "
                       "over-optimisation, curves",
                       epilog=EPILOG, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a run folder (config.yaml, final/, metrics.jsonl, summary.json), or a "
                   "folder holding exactly one (e.g. runs/quickstart)")
    p.add_argument("--model", help="policy model folder (instead of a run folder)")
    p.add_argument("--reference", help="reference model folder (default: the run's base model)")
    p.add_argument("--data", help="preference pairs file (default: the run's held-out data)")
    p.add_argument("--format", default=None, help="data format (default: the run's, else auto)")
    p.add_argument("--split", default=None, help="split of --data when it is a Hub dataset id or a DatasetDict "
                   "folder (id:split wins; default: the run's data.eval_split, else test)")
    p.add_argument("--dataset-config", default=None, help="Hub dataset config of --data (default: the run's)")
    p.add_argument("--judge", help="registered judge name (win rate, calibration, judge factors)")
    p.add_argument("--judge-arg", action="append", default=[], metavar="K=V", help="judge keyword argument (YAML value)")
    p.add_argument("--factor", action="append", default=[], metavar="SPEC",
                   help="extra preference factor: a registered name or module:function (repeatable)")
    p.add_argument("--pairs", type=int, default=64, help="preference pairs to score (0: all)")
    p.add_argument("--prompts", type=int, default=32, help="prompts to generate from (KL, win rate)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--beta", type=float, default=None, help="beta for the idealized ranking (default: the run's, else 0.1)")
    p.add_argument("--true-p", type=float, default=0.9,
                   help="assumed true preference probability when the data has no soft_label (stated in the report)")
    p.add_argument("--tie-band", type=float, default=0.0, help="judge verdicts with |P - 0.5| <= this are ties")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the win-rate interval")
    p.add_argument("--no-token-shift", action="store_true",
                   help="skip the token distribution shift of the policy against the reference (one greedy answer "
                        "per prompt)")
    p.add_argument("--no-likelihood-overopt", action="store_true",
                   help="skip the per-checkpoint likelihood over-optimisation indicators (run folders only)")
    p.add_argument("--no-reward-overopt", action="store_true",
                   help="skip judge score vs sqrt(KL) over checkpoints (run folder + a judge with score() only)")
    p.add_argument("--checkpoints", type=int, default=6,
                   help="models probed per run for over-optimisation, evenly spaced, start and final included "
                        "(0: all); each costs a model load and a round of generation per probe")
    p.add_argument("--overopt-k", type=int, default=10, help="k of the top-k entropy / mass indicators")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_diagnose)


def parse_judge_args(items: list[str]) -> dict:
    from prefalign.config import parse_key_values

    out = parse_key_values(items, "--judge-arg")
    for key, value in out.items():
        if key.endswith("_fn") and isinstance(value, str):
            # a function argument (CallableJudge's score_fn / compare_fn) given as module:function
            from prefalign.diagnostics.factors import resolve_factor

            out[key] = resolve_factor(value if ":" in value else f"{value}:")[1]
    return out


def run_inputs(args, run: Path | None = None) -> dict:
    """What a run folder says: models, data, beta, metrics; command-line options win."""
    from prefalign.config import build, load_config, prompt_length, read_tree, TrainConfig, validate
    from prefalign.recipes.policy import resolve_run_dir

    run = run or resolve_run_dir(args.run)  # a run folder, or quickstart's folder around its one run
    if is_online_run(run):
        # an online run's config is the TrainConfig keys plus an `online:` mapping load_config rejects
        cfg = build(TrainConfig, {k: v for k, v in read_tree(str(run / "config.yaml")).items() if k != "online"})
        validate(cfg)
    else:
        cfg = load_config(str(run / "config.yaml"))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else None
    beta = (summary or {}).get("objective_params", {}).get("beta", cfg.beta)
    return {"model": args.model or str(run / "final"), "reference": args.reference or cfg.reference_model or cfg.model,
            "base": cfg.model, "data": args.data or cfg.data.eval, "train_data": cfg.data.train,
            "eval_fraction": cfg.data.eval_fraction, "split_seed": cfg.seed, "format": args.format or cfg.data.format,
            "beta": args.beta if args.beta is not None else beta, "max_length": cfg.max_length,
            "max_prompt_length": prompt_length(cfg), "metrics": run / "metrics.jsonl", "summary": summary,
            "output_dir": args.output_dir or str(run / "diagnostics"), "objective": cfg.objective, "run": run,
            "split": getattr(args, "split", None) or cfg.data.eval_split, "train_split": cfg.data.split,
            "dataset_config": getattr(args, "dataset_config", None) or cfg.data.dataset_config}


def load_pairs(inputs: dict, n: int) -> tuple[list, list[str]]:
    from prefalign.data.builders.pairs import pairs_from_lists
    from prefalign.data.formats.readers import load_examples, seeded_split

    notes = []
    if inputs["data"]:
        examples, rep = load_examples(inputs["data"], inputs["format"] or "auto", "skip", split=inputs.get("split", "test"),
                                      dataset_config=inputs.get("dataset_config"))
        notes.append(f"data: `{inputs['data']}` ({rep.kept} rows kept, {sum(rep.skipped.values())} bad rows skipped)")
    else:
        # the run had no eval file: rebuild its seeded held-out split, which training never saw
        examples, rep = load_examples(inputs["train_data"], inputs["format"] or "auto", "skip",
                                      split=inputs.get("train_split", "train"), dataset_config=inputs.get("dataset_config"))
        _, examples = seeded_split(examples, inputs["eval_fraction"], inputs["split_seed"])
        notes.append(f"data: the run's held-out split of `{inputs['train_data']}` (fraction "
                     f"{inputs['eval_fraction']}, seed {inputs['split_seed']}): {len(examples)} examples")
    if rep.skipped:
        notes.append(f"bad rows skipped by reason: {dict(rep.skipped)}")
    kinds = {e.kind for e in examples}
    if "list" in kinds:
        examples, pairing = pairs_from_lists(examples, "best_vs_worst")
        notes.append(f"ranked lists paired best vs worst: {pairing.as_dict()}")
    pairs = [e for e in examples if e.kind == "pair"]
    if len(pairs) < len(examples):
        notes.append(f"{len(examples) - len(pairs)} non-pair examples ({sorted(kinds - {'pair'})}) not diagnosed")
    if not pairs:
        raise ValueError("the data holds no preference pairs to diagnose")
    return (pairs[:n] if n else pairs), notes


def cmd_diagnose(args) -> int:
    import torch

    from prefalign.diagnostics.diagnose import DiagnoseInputs, diagnose, true_preference
    from prefalign.diagnostics.factors import DEFAULT_FACTORS
    from prefalign.diagnostics.report import Report
    from prefalign.models.generation import GenerateSettings
    from prefalign.judges import make_judge
    from prefalign.models.causal_lm import load_model, load_tokenizer
    from prefalign.recipes.policy import resolve_run_dir

    if args.checkpoints < 0 or args.checkpoints == 1:
        raise ValueError(f"--checkpoints must be 0 (all) or at least 2 (the start and the final model), "
                         f"got {args.checkpoints}")
    run = resolve_run_dir(args.run) if args.run else None  # a run folder, or quickstart's around its one run
    if run is not None and is_online_run(run) and not args.model:
        return diagnose_online_run(args, run)
    if args.run:
        inputs = run_inputs(args, run)
    elif args.model and args.reference and args.data:
        inputs = {"model": args.model, "reference": args.reference, "base": args.reference, "data": args.data,
                  "format": args.format, "beta": args.beta, "max_length": 512, "max_prompt_length": 256,
                  "metrics": None, "summary": None, "output_dir": args.output_dir or "diagnostics", "objective": None,
                  "run": None, "split": getattr(args, "split", None) or "test",
                  "dataset_config": getattr(args, "dataset_config", None)}
    else:
        raise ValueError("give a run folder, or all of --model, --reference and --data")
    check_report_dir(Path(inputs["output_dir"]))  # before any model loads: the report replaces that folder
    beta = inputs["beta"] if inputs["beta"] is not None else 0.1
    examples, notes = load_pairs(inputs, args.pairs)
    p, p_source = true_preference(examples, args.true_p)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(str(Path(inputs["model"])))
    policy = load_policy(Path(inputs["model"]), inputs["base"], args.dtype).to(device).eval()
    reference = load_model(inputs["reference"], args.dtype).to(device).eval()
    judge_args = parse_judge_args(args.judge_arg)
    judge = make_judge(args.judge, **judge_args) if args.judge else None
    # a callable judge is only as recognisable as its function: name it
    fns = [getattr(v, "__name__", "?") for k, v in judge_args.items() if k.endswith("_fn") and callable(v)]
    judge_name = f"{args.judge}({', '.join(fns)})" if judge and fns else args.judge or ""
    notes = [f"policy: `{inputs['model']}`", f"reference: `{inputs['reference']}`"] + notes + [
        f"beta = {beta:g}" + (" (the run's)" if inputs["beta"] is not None else " (default; set --beta)"),
        f"generation: {args.prompts} prompts, up to {args.max_new_tokens} new tokens, batch {args.batch_size}, "
        f"seed {args.seed}", f"judge: `{judge_name}`" if judge else "judge: none (no win rate or calibration)"]
    if not inputs["run"]:
        notes.append("no run folder: no checkpoints, so no likelihood or reward over-optimisation sections")
    # prompts cut as training cut them (the run's prompt budget); generation also keeps room for new tokens
    settings = GenerateSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                                max_prompt_tokens=inputs["max_prompt_length"])
    report = Report(f"prefalign diagnostics: {inputs['model']}", inputs["output_dir"])

    def fill() -> None:
        diagnose(DiagnoseInputs(policy, reference, tokenizer, examples, beta, p, p_source, settings, judge,
                                judge_name, tuple(DEFAULT_FACTORS) + tuple(args.factor), args.prompts,
                                inputs["max_length"], inputs["max_prompt_length"], args.tie_band, args.bootstrap,
                                inputs["metrics"], inputs["summary"], not args.no_progress, notes,
                                run_dir=inputs["run"], reference_dir=inputs["reference"],
                                loader=lambda folder: load_policy(Path(folder), inputs["base"], args.dtype),
                                token_shift=not args.no_token_shift, likelihood_overopt=not args.no_likelihood_overopt,
                                reward_overopt=not args.no_reward_overopt, checkpoints=args.checkpoints,
                                overopt_k=args.overopt_k), report)
        if run is not None and is_online_run(run):
            from prefalign.diagnostics.online_sections import online_section

            online_section(report, run, args.bootstrap, args.seed)

    return write_report(report, fill)


def write_report(report, fill) -> int:
    """Fill the report's sections, then write it; a failure leaves no half-written report folder."""
    try:
        fill()
    except BaseException:
        report.discard()
        raise
    out = report.write()
    print(f"report: {out / 'report.html'} (also report.md, report.json)")
    return 0


def is_online_run(run: Path) -> bool:
    return (Path(run) / "rounds").is_dir()


def diagnose_online_run(args, run: Path) -> int:
    """An online run without --model: its rounds' evaluations and training curves, no model loads."""
    import yaml

    from prefalign.diagnostics.diagnose import curves_section
    from prefalign.diagnostics.online_sections import online_section
    from prefalign.diagnostics.report import Report

    out_dir = Path(args.output_dir or run / "diagnostics")
    check_report_dir(out_dir)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{run / 'config.yaml'}: the top level must be a mapping of keys")
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    notes = [f"online run: `{run}` (base model `{config.get('model')}`, objective `{config.get('objective')}`)",
             "skipped: ranking accuracy, sample KL, token shift, win rate, judge calibration, preference factors and "
             "over-optimisation need the policy, the reference and the data; give `--model RUN/final` (the run's "
             "reference and held-out data are then read from its config) to add them"]
    if args.judge:
        notes.append(f"--judge `{args.judge}` not used: the rounds were judged by the run's own judge; the judge "
                     "sections need --model")
    report = Report(f"prefalign diagnostics: {run}", out_dir)

    def fill() -> None:
        report.add("Inputs", "\n".join(f"- {n}" for n in notes), data={"online": config.get("online")})
        online_section(report, run, args.bootstrap, args.seed)
        if (run / "metrics.jsonl").is_file():
            curves_section(report, run / "metrics.jsonl", summary)

    return write_report(report, fill)
