"""The gold-reward testbed the reproductions share: story openings, continuations sampled from
the shipped tiny model, labelled by VADER sentiment, and the same VADER scoring the aligned
policies' samples (the DPO paper's controlled-sentiment task, arXiv:2305.18290 section 6.1, at
CPU scale: a 1.8M-parameter Llama instead of GPT-2 large, VADER instead of a RoBERTa classifier).

Prompts are short story openings built from fixed word lists (the shipped model was pretrained
partly on TinyStories), so nothing is downloaded and every run sees the same prompts. Held-out
prompts use names the training prompts never do. Every run is an ordinary run folder under the
claim's output folder; a finished one (summary.json) is reused when the claim runs again.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

import prefalign
from prefalign.config import TrainConfig, build, validate

TRAIN_NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Lucy", "Tim", "Sue", "Jack", "Emma"]
EVAL_NAMES = ["Zoe", "Leo", "Kim", "Bob", "Amy", "Dan"]
THINGS = ["dog", "ball", "tree", "cake", "park", "box", "bird", "car", "hat", "cat", "boat", "flower"]
OPENINGS = ["Once upon a time, there was a little girl named {name}. She saw a {thing} and",
            "One day, {name} went to the {thing}. It was",
            "{name} had a big {thing}. Every day, {name}",
            "There was a boy named {name} who found a {thing}. He",
            "{name} and mom looked at the {thing}. Mom said,"]


def tiny_base() -> str:
    return str(Path(prefalign.__file__).parent / "assets" / "tiny-base")


def story_prompts(n: int, held_out: bool, seed: int = 0) -> list[str]:
    """n distinct story openings (training names, or the held-out names), in a seeded order."""
    names = EVAL_NAMES if held_out else TRAIN_NAMES
    every = [o.format(name=a, thing=t) for o in OPENINGS for a in names for t in THINGS]
    random.Random(seed).shuffle(every)
    if n > len(every):
        raise ValueError(f"only {len(every)} distinct {'held-out' if held_out else 'training'} prompts exist, asked {n}")
    return every[:n]


def build_gold_data(out_dir: Path, train_prompts: int, eval_prompts: int, num_samples: int = 4,
                    max_new_tokens: int = 32, seed: int = 0, model: str | None = None) -> dict:
    """train.jsonl / eval.jsonl of VADER-labelled pairs sampled from the model; reused when present."""
    from prefalign.data.builders.pipeline import run_builder
    from prefalign.data.builders.registry import BuildContext
    from prefalign.data.builders.synth import LocalModel
    from prefalign.data.records import Example
    from prefalign.judges import make_judge
    from prefalign.models.causal_lm import load_model, load_tokenizer

    out_dir = Path(out_dir)
    report_path = out_dir / "data_report.json"
    settings = {"train_prompts": train_prompts, "eval_prompts": eval_prompts, "num_samples": num_samples,
                "max_new_tokens": max_new_tokens, "seed": seed, "model": model}
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        if report.get("settings") == settings:
            return report
        raise ValueError(f"{out_dir} holds testbed data built with other settings ({report.get('settings')}); "
                         "choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model or tiny_base()
    generator = LocalModel(load_model(model).eval(), load_tokenizer(model))
    context = BuildContext(judge=make_judge("vader_sentiment"), generator=generator, seed=seed)
    report: dict = {"settings": settings}
    # the held-out pairs only feed the run's own held-out loss and accuracies: 16 prompts are enough
    for split, n, held in (("train", train_prompts, False), ("eval", min(eval_prompts, 16), True)):
        prompts = [Example(p, [], [], "prompt", f"story:{i}") for i, p in enumerate(story_prompts(n, held, seed))]
        rule = "all_pairs" if split == "train" else "best_vs_worst"  # one held-out pair per prompt
        pairs, report[split] = run_builder("gold_pairs", prompts, {"num_samples": num_samples, "rule": rule,
                                                                   "max_new_tokens": max_new_tokens}, context)
        rows = [{"prompt": e.prompt, "chosen": e.responses[0], "rejected": e.responses[1], **e.extra} for e in pairs]
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report_path.write_text(json.dumps(report, indent=1))
    return report


def spread_ok(data_report: dict, min_share: float = 0.5) -> tuple[bool, str]:
    """The testbed's precondition: the gold reward varies within a prompt (else pairs are mostly ties)."""
    share = data_report["train"]["share_prompts_std_ge_0.1"]
    ok = share >= min_share and data_report["train"]["pairs"] >= 16
    return ok, (f"VADER std >= 0.1 on {share:.0%} of training prompts (need {min_share:.0%}), "
                f"{data_report['train']['pairs']} pairs (need 16)")


def train_run(out_dir: Path, data_dir: Path, objective: str, steps: int, beta: float | None = None,
              save_steps: int = 0, learning_rate: float = 3e-4, batch_size: int = 16, seed: int = 0,
              objective_args: dict | None = None, model: str | None = None) -> Path:
    """One ordinary run folder trained on the testbed's pairs; a finished one is reused."""
    from prefalign.recipes.policy import train

    out_dir = Path(out_dir)
    tree = {"model": model or tiny_base(), "objective": objective, "beta": beta, "objective_args": objective_args or {},
            "output_dir": str(out_dir), "max_steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "warmup_ratio": 0.05, "lr_scheduler": "constant", "max_length": 96, "max_prompt_length": 40,
            "save_steps": save_steps, "keep_last": 1000, "seed": seed, "progress": False, "logging_steps": 10,
            "overwrite": (out_dir / "config.yaml").exists(),
            "data": {"train": str(Path(data_dir) / "train.jsonl"), "eval": str(Path(data_dir) / "eval.jsonl"),
                     "format": "pairs"}}
    if (out_dir / "summary.json").is_file():
        reuse_finished(out_dir, tree)
        return out_dir
    cfg = build(TrainConfig, tree)
    validate(cfg)
    train(cfg)
    return out_dir


def reuse_finished(out_dir: Path, tree: dict) -> None:
    """A finished run is reused only when it was trained as asked: one trained with other steps, beta or
    checkpoints would silently stand in for the cell the claim describes."""
    import yaml

    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    keys = ("model", "objective", "beta", "objective_args", "max_steps", "learning_rate", "save_steps", "seed")
    differ = [f"{k}: {saved.get(k)!r} there, {tree[k]!r} asked" for k in keys if saved.get(k) != tree[k]]
    if differ:
        raise ValueError(f"{out_dir} holds a finished run trained with other settings ({'; '.join(differ)}); "
                         "remove it or choose another output folder")


def evaluation_key(folder: Path, prompts: list[str], max_new_tokens: int, seed: int, indicators: bool,
                   reference: str) -> str:
    """A name for one evaluation: the model's weights (path, size, time) and every setting that changes it."""
    import hashlib

    folder = Path(folder).resolve()
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors"))
    what = [str(folder), weights, prompts, max_new_tokens, seed, indicators, str(Path(reference).resolve())]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:20]


def evaluate_models(models: list[tuple[int, Path]], prompts: list[str], max_new_tokens: int = 32, seed: int = 1,
                    indicators: bool = False, reference: str | None = None, cache_dir: Path | None = None) -> list[dict]:
    """Per (step, model folder): gold (VADER) score, sampled KL to the reference and length per prompt,
    and the top-k entropy and mass along the samples when `indicators`. With `cache_dir`, each
    evaluation is kept there and reused when the claim runs again (sampling is seeded: same result)."""
    from prefalign.diagnostics.overoptimization import likelihood_indicators
    from prefalign.diagnostics.sweep_report import sample_and_score
    from prefalign.judges import make_judge
    from prefalign.models.causal_lm import load_model, load_tokenizer

    reference = reference or tiny_base()
    ref_model, tokenizer = load_model(reference).eval(), load_tokenizer(reference)
    judge = make_judge("vader_sentiment")
    rows = []
    for step, folder in models:
        kept = None
        if cache_dir is not None:
            kept = Path(cache_dir) / f"{evaluation_key(folder, prompts, max_new_tokens, seed, indicators, reference)}.json"
            if kept.is_file():
                rows.append({**json.loads(kept.read_text()), "step": step})
                continue
        policy = load_model(str(folder)).eval()
        row = {"step": step, **sample_and_score(policy, ref_model, tokenizer, judge, prompts, max_new_tokens, seed)}
        if indicators:
            ind = likelihood_indicators(policy, tokenizer, prompts, 10, max_new_tokens, seed)
            row.update(topk_entropy=ind["topk_entropy"], topk_mass=ind["topk_mass"])
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            part = kept.with_suffix(".part")
            part.write_text(json.dumps(row))
            part.replace(kept)  # never a half-written evaluation
        rows.append(row)
    return rows


def distinct_2(text: str) -> float:
    """Share of distinct word bigrams among the text's word bigrams (1.0 with fewer than two bigrams:
    too short to repeat itself)."""
    words = text.split()
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if len(bigrams) >= 2 else 1.0


def nll_per_token(row: dict) -> list[float]:
    """Per prompt: the sample's mean negative log-likelihood per token under the reference."""
    return [-lp / max(int(n), 1) for lp, n in zip(row["ref_logp"], row["tokens"])]


def quality_threshold(reference_row: dict, quantile: float = 0.99) -> float:
    """The `quantile` of the reference's own samples' per-token NLL (under the reference)."""
    return float(torch.tensor(nll_per_token(reference_row)).quantile(quantile))


def gated_gold(row: dict, threshold: float, min_distinct: float = 0.5) -> list[float]:
    """REPRODUCE.md's quality-gated gold, pre-registered against a gamed VADER: -1 where the sample
    repeats itself (distinct-2 < min_distinct) or is less likely under the reference than 99% of the
    reference's own samples (per-token NLL above `threshold`), else its VADER score."""
    return [-1.0 if distinct_2(text) < min_distinct or nll > threshold else float(score)
            for text, nll, score in zip(row["text"], nll_per_token(row), row["score"])]


def best_of_n(prompts: list[str], n_values: list[int], max_new_tokens: int = 32, seed: int = 1) -> list[dict]:
    """Best-of-N from the reference under VADER: per N, per-prompt gold of the best of the first N
    samples, and the analytic KL bound log N - (N - 1) / N (Stiennon et al. arXiv:2009.01325, App. G)."""
    import math

    from prefalign.judges import make_judge
    from prefalign.models.causal_lm import load_model, load_tokenizer
    from prefalign.models.generation import GenerateSettings, generate

    model, tokenizer = load_model(tiny_base()).eval(), load_tokenizer(tiny_base())
    settings = GenerateSettings(max_new_tokens=max_new_tokens, num_return_sequences=max(n_values), seed=seed,
                                batch_size=16)
    samples = generate(model, tokenizer, prompts, settings, progress=False)
    judge = make_judge("vader_sentiment")
    scores = [judge.score([p] * len(s), s) for p, s in zip(prompts, samples)]
    return [{"n": n, "kl": math.log(n) - (n - 1) / n, "score": [max(s[:n]) for s in scores]} for n in n_values]


def mean_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> dict:
    from prefalign.diagnostics.online import summarize

    return summarize([float(v) for v in values], n_boot, seed)


def paired_gain(a: list[float], b: list[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of a - b over prompts with its bootstrap interval (a, b aligned by prompt)."""
    return mean_ci([x - y for x, y in zip(a, b)], n_boot, seed)


def set_threads() -> None:
    # the claims run in one process; more threads than cores only adds contention on a shared machine
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))


def combine(rules: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(verdict value, reason) from [(rule, PASS|FAIL|INCONCLUSIVE, why)]: any FAIL fails, then any
    INCONCLUSIVE leaves the claim open; PASS needs every rule to pass."""
    states = [s for _, s, _ in rules]
    verdict = "FAIL" if "FAIL" in states else "INCONCLUSIVE" if "INCONCLUSIVE" in states else "PASS"
    return verdict, "; ".join(f"{name}: {state} ({why})" for name, state, why in rules)


def gain_rule(gain: dict, what: str) -> tuple[str, str]:
    """PASS when the interval of a gain lies above 0, FAIL when its mean is not above 0, else too noisy to tell."""
    text = f"{what} {gain['mean']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]"
    if gain["low"] > 0:
        return "PASS", text
    if gain["mean"] <= 0:
        return "FAIL", text
    return "INCONCLUSIVE", text + ", interval includes 0"
