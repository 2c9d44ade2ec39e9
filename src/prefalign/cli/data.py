"""`prefalign data build | list | inspect | magpie` and `prefalign generate`: thin subcommands.

Each loads, builds its context from flags, calls one library function, writes atomically and
prints counts. Generic over the data-builder registry: any registered builder runs by name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def key_values(items: list[str], flag: str) -> dict:
    """['k=v', ...] -> {k: YAML-parsed v} (numbers, booleans, lists, mappings as in a config)."""
    from prefalign.config import parse_key_values

    return parse_key_values(items, flag)


def builder_specs(args) -> list[dict]:
    import yaml

    if bool(args.builder) == bool(args.builders_yaml):
        raise ValueError("give one of --builder NAME (with --param k=v) or --builders-yaml FILE")
    if args.builder:
        return [{"name": args.builder, **key_values(args.param, "--param")}]
    tree = yaml.safe_load(Path(args.builders_yaml).read_text(encoding="utf-8"))
    specs = tree.get("builders", tree.get("data", {}).get("builders")) if isinstance(tree, dict) else tree
    if not isinstance(specs, list):
        raise ValueError(f"{args.builders_yaml}: expected a list of {{name: ..., params}} (or a `builders:` key)")
    return specs


def build_context(args):
    from prefalign.data.builders.pipeline import BuildContext

    context = BuildContext(seed=args.seed)
    if args.judge:
        from prefalign.judges import make_judge

        context.judge = make_judge(args.judge, **key_values(args.judge_arg, "--judge-arg"))
    if args.encoder:
        from prefalign.models.encoders import SentenceEncoder

        context.encoder = SentenceEncoder(None if args.encoder == "minilm" else args.encoder, revision=args.encoder_revision)
    if args.generator_model:
        context.generator = local_model(args.generator_model, args.generator_revision)
    return context


def local_model(folder: str, revision: str | None = None):
    from prefalign.data.builders.synth import LocalModel
    from prefalign.models.causal_lm import load_model, load_tokenizer

    return LocalModel(load_model(folder, revision=revision).eval(), load_tokenizer(folder, revision))


def print_table(title: str, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(str(key), value if isinstance(value, str) else json.dumps(value, default=str))
    Console(width=160, markup=False).print(table)


def print_steps(reports: list[dict]) -> None:
    for r in reports:
        print_table(f"{r['builder']}: {r['in']} in, {r['out']} out",
                    {k: v for k, v in r.items() if k not in ("builder", "in", "out")})


def cmd_build(args) -> int:
    from prefalign.config import check_builders
    from prefalign.data.inspection import example_stats
    from prefalign.data.builders.pipeline import run_builders
    from prefalign.data.formats.readers import load_examples
    from prefalign.data.formats.writers import write_examples

    if Path(args.input).exists() and Path(args.out).resolve() == Path(args.input).resolve():
        # the output replaces its file atomically: written over the input, the source data would be gone
        raise ValueError(f"--out {args.out} is the input file; write the built data to another file")
    specs = builder_specs(args)
    check_builders(specs)  # names and parameters, before any model is loaded
    examples, load_report = load_examples(args.input, args.format, args.on_bad_row, split=args.split,
                                          dataset_config=args.dataset_config)
    if load_report.skipped or load_report.merged_lists:
        print_table(f"{args.input}: {load_report.kept} of {load_report.rows} rows read", load_report.as_dict())
    out, reports = run_builders(examples, specs, build_context(args))
    print_steps(reports)
    path = write_examples(out, args.out)
    print_table(f"wrote {len(out)} examples to {path}", example_stats(out)[0])
    return 0


def cmd_list(args) -> int:
    from prefalign.data.builders.pipeline import load_all_builders

    builders = sorted(load_all_builders().values(), key=lambda b: b.name)
    if args.markdown:
        print("| builder | paper | parameters | what it does |\n|---|---|---|---|")
        for b in builders:
            params = ", ".join(f"{k}={v!r}" for k, v in b.params().items())
            print(f"| `{b.name}` | {'arXiv:' + b.paper if b.paper else '-'} | {params or '-'} | {b.summary} |")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(builders)} data builders")
    for col in ("builder", "paper", "parameters (defaults)", "summary"):
        table.add_column(col, overflow="fold")
    for b in builders:
        table.add_row(b.name, f"arXiv:{b.paper}" if b.paper else "-",
                      ", ".join(f"{k}={v!r}" for k, v in b.params().items()), b.summary)
    Console(width=200, markup=False).print(table)
    return 0


def cmd_inspect(args) -> int:
    from prefalign.data.inspection import inspect_file, plot_series

    tokenizer = None
    if args.tokenizer:
        from prefalign.models.causal_lm import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    stats, series = inspect_file(args.file, tokenizer, args.split, args.dataset_config)
    stem = Path(stats["file"]).name.split(".")[0].replace(":", "-")  # a dataset's label is folder:split
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_series(series, out_dir / f"{stem}.inspect.png", Path(args.file).name)
    report = out_dir / f"{stem}.inspect.json"
    report.write_text(json.dumps(stats, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    print_table(f"{args.file}: {stats['detected']}", {k: v for k, v in stats.items() if k not in ("file", "detected")})
    print(f"plot: {plot}\nstatistics: {report}")
    return 0


def cmd_magpie(args) -> int:
    from prefalign.data.builders.pipeline import BuildContext, run_builder
    from prefalign.data.formats.writers import write_examples

    params = {"n": args.n, "max_instruction_tokens": args.max_instruction_tokens,
              "max_response_tokens": args.max_response_tokens, "temperature": args.temperature,
              "top_p": args.top_p, "batch_size": args.batch_size}
    out, report = run_builder("magpie", [], params, BuildContext(generator=local_model(args.model, args.model_revision),
                                                                 seed=args.seed))
    print_steps([report])
    if not out:
        raise ValueError(f"magpie kept none of {args.n} samples ({report['dropped']}); raise the token budgets")
    print(f"wrote {len(out)} instruction/response rows to {write_examples(out, args.out)}")
    return 0


def reward_conditioning(run_dir: Path) -> tuple[str, float] | None:
    """(template, best score) when the run was trained on reward-augmented data, else None.

    Read from the run's config.yaml (data.reward_augment, or a reward_augment step in
    data.builders) and summary.json (the highest target score written into a training prompt).
    """
    import yaml

    from prefalign.data.builders.pairs import REWARD_TEMPLATE

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["data"]
    data = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["data"]
    found = None
    steps = [s for s in cfg.get("builders") or [] if s.get("name") == "reward_augment"]
    if steps:
        reports = [r for r in data["builders"]["train"] if r["builder"] == "reward_augment"]
        found = (steps[-1].get("template", REWARD_TEMPLATE), reports[-1]["best_score"])
    if cfg.get("reward_augment"):  # the old key runs after data.builders: its prompts are the outer ones
        found = (cfg.get("reward_template", REWARD_TEMPLATE), data["reward_augment"]["train"]["best_score"])
    return found


def cmd_generate(args) -> int:
    from prefalign.data.builders.pairs import condition_prompt
    from prefalign.models.generation import GenerateSettings, generate

    prompts = list(args.prompt or [])
    if args.prompts:
        from prefalign.data.formats.readers import iter_rows

        prompts += [row["prompt"] for _, row in iter_rows(args.prompts) if isinstance(row, dict) and "prompt" in row]
    if not prompts:
        raise ValueError("no prompts: give --prompt TEXT or --prompts FILE (rows with a 'prompt' field)")
    from prefalign.recipes.policy import resolve_run_dir

    run = resolve_run_dir(args.run)  # a run folder, or quickstart's folder around its one run
    conditioning = None if args.no_condition else reward_conditioning(run)
    if conditioning and args.score is not None:
        conditioning = (conditioning[0], args.score)
    shown = [condition_prompt(p, conditioning[1], conditioning[0]) if conditioning else p for p in prompts]
    from prefalign.recipes.run_folders import load_run_policy

    model, tokenizer = load_run_policy(run)
    settings = GenerateSettings(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                                temperature=args.temperature or 1.0, seed=args.seed)
    outputs = generate(model, tokenizer, shown, settings, progress=False)
    rows = [{"prompt": p, "conditioned_prompt": s if conditioning else None, "response": o[0]}
            for p, s, o in zip(prompts, shown, outputs)]
    note = f"conditioned on score {conditioning[1]:g}" if conditioning else "no reward conditioning"
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} responses ({note}) to {args.out}")
    else:
        print(f"({note})")
        for r in rows:
            print(f"> {r['conditioned_prompt'] or r['prompt']}\n{r['response']}\n")
    return 0


def split_options(parser) -> None:
    parser.add_argument("--split", default="train", help="split of a Hub dataset id or DatasetDict folder "
                                                         "(id:split wins; default train)")
    parser.add_argument("--dataset-config", default=None, help="Hub dataset config (subset) name")


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="build, list and inspect data (builders, Magpie synthesis)")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(fn=lambda args: data.print_help() or 2)
    b = actions.add_parser("build", help="run data builders on a file and write the result")
    b.add_argument("input", help="data file (any format `prefalign train` reads), save_to_disk folder or Hub "
                                 "dataset id (owner/name or owner/name:split)")
    split_options(b)
    b.add_argument("--builder", help="a registered builder (`prefalign data list`)")
    b.add_argument("--param", action="append", metavar="K=V", help="a parameter of --builder (repeatable)")
    b.add_argument("--builders-yaml", help="YAML list of {name: ..., params} steps (or a `builders:` key)")
    b.add_argument("--out", required=True, help="output .jsonl or .parquet (written atomically)")
    b.add_argument("--format", default="auto", help="input format (default: detected)")
    b.add_argument("--on-bad-row", default="error", choices=("error", "skip"))
    b.add_argument("--judge", help="judge for builders that need one (prefalign.judges registry name)")
    b.add_argument("--judge-arg", action="append", metavar="K=V", help="judge constructor argument (repeatable)")
    b.add_argument("--encoder", help="sentence encoder: minilm, a local folder or a Hub id")
    b.add_argument("--encoder-revision", help="Hub branch, tag or commit that pins --encoder")
    b.add_argument("--generator-model", help="local HF model folder or Hub id for builders that generate (magpie, "
                                             "urial)")
    b.add_argument("--generator-revision", help="Hub branch, tag or commit that pins --generator-model")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=cmd_build)
    lst = actions.add_parser("list", help="the registered data builders with paper and parameters")
    lst.add_argument("--markdown", action="store_true", help="print a Markdown table")
    lst.set_defaults(fn=cmd_list)
    i = actions.add_parser("inspect", help="schema, counts, lengths, duplicates, label balance, score gaps + plot")
    i.add_argument("file", help="data file, save_to_disk folder or Hub dataset id (owner/name[:split])")
    split_options(i)
    i.add_argument("--tokenizer", help="local tokenizer/model folder: also count tokens")
    i.add_argument("--out-dir", default=".", help="where FILE.inspect.png and FILE.inspect.json go")
    i.set_defaults(fn=cmd_inspect)
    m = actions.add_parser("magpie", help="synthesise instruction/response rows from a local chat model (Magpie)")
    m.add_argument("--model", required=True, help="chat model (with a chat template): a local folder or Hub id")
    m.add_argument("--model-revision", help="Hub branch, tag or commit that pins --model")
    m.add_argument("-n", type=int, default=100, help="instructions to sample")
    m.add_argument("--out", required=True, help="output .jsonl or .parquet (SFT rows: prompt, completion)")
    m.add_argument("--max-instruction-tokens", type=int, default=96)
    m.add_argument("--max-response-tokens", type=int, default=256)
    m.add_argument("--temperature", type=float, default=1.0)
    m.add_argument("--top-p", type=float, default=1.0)
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(fn=cmd_magpie)
    g = sub.add_parser("generate", help="answer prompts with a trained run's final model "
                                        "(reward-augmented runs: conditioned on the best score)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--run", required=True, help="run folder (output_dir of `prefalign train`), or a folder "
                                               "holding exactly one (e.g. runs/quickstart)")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompts", help="file of rows with a 'prompt' field")
    g.add_argument("--score", type=float, help="condition on this score instead of the run's best")
    g.add_argument("--no-condition", action="store_true", help="do not write a target score into the prompts")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="write JSONL rows {prompt, conditioned_prompt, response} here")
    g.set_defaults(fn=cmd_generate)
