"""Likelihood over-optimisation indicators and the trainer's early-stopping monitor.

Shi et al., "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms",
arXiv:2410.11677. The paper finds that pushing completion likelihood up past a point costs
output diversity and then performance, and names two indicators that fall when that happens,
both read from the policy's next-token distributions p_t along its own generations:

    top-k entropy   H_k(t) = -sum_{i <= k} q_i log q_i,  q_i = p_(i) / sum_{j <= k} p_(j)
    top-k mass      M_k(t) = sum_{i <= k} p_(i)

with p_(1) >= p_(2) >= ... the sorted probabilities. A falling H_k means the few plausible
next tokens collapse onto one; a falling M_k means probability leaks into the long tail.

Where this departs from (or pins down what we could not read in) the paper: the entropy is
taken over the top-k probabilities renormalised to sum to 1, so that it measures the shape
of the top-k set independently of M_k (the two indicators then never move together by
construction); each response's indicators are its mean over generated positions (the EOS
position included), then averaged over responses, so every prompt weighs the same; k = 10 by
default; samples are drawn at temperature 1 with a fixed seed, so two checkpoints are
compared on the same random stream. Given `responses`, the same statistics are read along
those fixed responses instead (teacher forcing), which removes sampling noise but measures
the policy off its own distribution.

Early stopping (OveroptMonitor): the indicator's value at step 0 is the baseline v0. A later
measurement v is healthy while v >= (1 - threshold) * v0, e.g. threshold 0.2 tolerates a 20%
drop. The first unhealthy measurement stops training; the best model is the last healthy one
(saved when it was measured, since checkpoints rotate), which the run's summary names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from prefalign.models.generation import GenerateSettings, generate_batch
from prefalign.logps import chunk_rows, response_forward, row_logits

INDICATORS = ("topk_entropy", "topk_mass")


def topk_stats(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, V] logits -> ([M] entropy of the renormalised top-k probabilities, [M] top-k mass)."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must be between 1 and the vocabulary size {logits.shape[-1]}, got {k}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = logp.topk(k, dim=-1).values
    mass_log = torch.logsumexp(top, dim=-1)
    q_log = top - mass_log[:, None]
    return -(q_log.exp() * q_log).sum(-1), mass_log.exp()


def position_stats(model, ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k entropy and mass [M] at every position that predicts a response token, and the row [M] of each."""
    return forward_stats(response_forward(model, ids, attention_mask, response_mask, "lean"), ids.shape[1], k)


def forward_stats(fwd, width: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """position_stats from a response forward already computed (its log-probs can be used too)."""
    entropy, mass = [], []
    chunk = chunk_rows(fwd.rows.shape[-1] if fwd.head is None else fwd.head.shape[0])
    for s in range(0, fwd.rows.shape[0], chunk):
        e, m = topk_stats(row_logits(fwd.rows[s:s + chunk], fwd.head, torch.float32), k)
        entropy.append(e)
        mass.append(m)
    rows = torch.div(fwd.index, width, rounding_mode="floor")
    return torch.cat(entropy).cpu(), torch.cat(mass).cpu(), rows.cpu()


def per_row_mean(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of `values` within each of n rows (rows without any value are dropped)."""
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, values.double())
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, torch.ones_like(values, dtype=torch.float64))
    return (total / count)[count > 0]


def right_padded(tokenizer, prompts: list, responses: list[str]) -> tuple[torch.Tensor, ...]:
    from prefalign.data.tokenize import tokenize_response

    seqs = [tokenize_response(tokenizer, p, r, f"responses[{i}]") for i, (p, r) in enumerate(zip(prompts, responses))]
    width = max(len(ids) for ids, _ in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in seqs])
    cols = torch.arange(width)[None, :]
    lengths = torch.tensor([len(x) for x, _ in seqs])[:, None]
    starts = torch.tensor([s for _, s in seqs])[:, None]
    return ids, (cols < lengths).long(), (cols >= starts) & (cols < lengths)


@torch.no_grad()
def likelihood_indicators(model, tokenizer, prompts: list, k: int = 10, max_new_tokens: int = 48, seed: int = 0,
                          batch_size: int = 8, responses: list[str] | None = None,
                          max_prompt_tokens: int = 256) -> dict:
    """Top-k entropy and top-k mass of `model` along its samples for `prompts` (or along `responses`)."""
    if not prompts:
        raise ValueError("likelihood_indicators needs at least one prompt")
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    settings = GenerateSettings(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens)
    device = next(model.parameters()).device
    entropies, masses, positions = [], [], 0
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        if responses is None:
            b = generate_batch(model, tokenizer, chunk, settings)
            ids, mask, resp = b.ids, b.attention_mask, b.response_mask
        else:
            ids, mask, resp = right_padded(tokenizer, chunk, responses[s:s + batch_size])
        e, m, rows = position_stats(model, ids.to(device), mask.to(device), resp.to(device), k)
        entropies.append(per_row_mean(e, rows, ids.shape[0]))
        masses.append(per_row_mean(m, rows, ids.shape[0]))
        positions += int(e.numel())
    model.train(was_training)
    entropy, mass = torch.cat(entropies), torch.cat(masses)
    return {"k": k, "topk_entropy": float(entropy.mean()), "topk_mass": float(mass.mean()),
            "topk_entropy_max": math.log(k), "responses": int(entropy.numel()), "positions": positions,
            "mode": "generated" if responses is None else "given responses"}


def checkpoint_step(folder: Path) -> int | None:
    m = re.fullmatch(r"checkpoint-(\d+)", Path(folder).name)
    return int(m.group(1)) if m else None


def run_models(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, model folder) of a run: its starting model at step 0, every checkpoint-N, and final."""
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    found = {0: Path(yaml.safe_load((run_dir / "config.yaml").read_text())["model"])}
    for p in run_dir.glob("checkpoint-*"):
        if checkpoint_step(p) is not None:
            found[checkpoint_step(p)] = p
    summary = run_dir / "summary.json"
    if (run_dir / "final").is_dir() and summary.exists():
        found.setdefault(int(json.loads(summary.read_text())["steps"]), run_dir / "final")
    return sorted(found.items())


def indicators_over_checkpoints(models: list[tuple[int, Path]], prompts: list, k: int = 10, dtype: str = "float32",
                                device: str | None = None, progress: bool = True, loader: Callable | None = None,
                                tokenizer=None, **kwargs) -> dict:
    """likelihood_indicators for each (step, folder); a table of rows ordered by step.

    loader(folder) -> model replaces load_model (e.g. to merge a LoRA checkpoint into its base);
    tokenizer, when given, is used for every folder (a LoRA checkpoint may not hold one).
    """
    from prefalign.logging import progress_iter
    from prefalign.models.causal_lm import load_model, load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loader = loader or (lambda folder: load_model(str(folder), dtype))
    rows = []
    for step, folder in progress_iter(models, "over-optimisation indicators", enabled=progress):
        model = loader(folder).to(device)
        result = likelihood_indicators(model, tokenizer or load_tokenizer(str(folder)), prompts, k, **kwargs)
        rows.append({"step": step, "model": str(folder), **result})
        del model
    return {"k": k, "prompts": len(prompts), "rows": rows}


def plot_likelihood_indicators(result: dict, out_png: Path, title: str = "", logged: list[dict] | None = None,
                               stop: dict | None = None) -> Path:
    """Top-k entropy and top-k mass against training step, one panel each.

    result: a probe table (indicators_over_checkpoints) or a monitor summary. logged: rows
    {step, topk_entropy, topk_mass} the trainer measured (other prompts, drawn apart); stop: a
    monitor summary whose threshold is drawn on its indicator's panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"] if "rows" in result else result["history"]  # a probe table or a monitor summary
    stop = stop or (result if "threshold_value" in result else None)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in zip(axes, INDICATORS, (f"top-{result['k']} entropy (nats)", f"top-{result['k']} mass")):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], "o-", label="checkpoints" if logged else None)
        pts = [(r["step"], r[key]) for r in logged or [] if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), "s--", ms=4, alpha=0.7, label="logged in training (its prompts)")
        if stop and stop.get("indicator") == key and stop.get("threshold_value") is not None:
            ax.axhline(stop["threshold_value"], color="tab:red", ls="--", lw=1, label="stop threshold")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "likelihood over-optimisation indicators (arXiv:2410.11677)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


@dataclass
class OveroptMonitor:
    """Measures the indicators every `every` steps during training and decides when to stop.

    `observe` holds the decision (pure, given the measured values); `at_step` measures and
    observes. `save_best(step)` is called at each healthy measurement when stopping is on, so
    the last healthy model survives checkpoint rotation. The state is written to `state_path`
    after each measurement and read back on resume, so the baseline stays the step-0 value.
    """

    prompts: list
    tokenizer: object
    every: int
    k: int = 10
    indicator: str = "topk_entropy"
    threshold: float = 0.0  # relative drop from the step-0 value that stops training; 0: never stop
    max_new_tokens: int = 32
    seed: int = 0
    batch_size: int = 8
    save_best: Callable[[int], None] | None = None
    state_path: Path | None = None
    resume: bool = False  # read state_path back (a resumed run keeps its step-0 baseline)
    history: list = field(default_factory=list)
    initial: float | None = None
    best_step: int | None = None
    stopped_at: int | None = None

    def __post_init__(self):
        if self.indicator not in INDICATORS:
            raise ValueError(f"indicator must be one of {INDICATORS}, got {self.indicator!r}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"the over-optimisation threshold is a relative drop in [0, 1), got {self.threshold}")
        if self.resume and self.state_path is not None and Path(self.state_path).exists():
            saved = json.loads(Path(self.state_path).read_text())
            self.history, self.initial, self.best_step = saved["history"], saved["initial"], saved["best_step"]

    def due(self, step: int, last_step: int) -> bool:
        return step == 0 or (self.every > 0 and step % self.every == 0) or step == last_step

    def limit(self) -> float | None:
        return None if self.initial is None or self.threshold <= 0 else (1 - self.threshold) * self.initial

    def observe(self, step: int, values: dict) -> bool:
        """Record one measurement; True when training should stop."""
        value = values[self.indicator]
        if self.initial is None:
            self.initial = value
        healthy = self.limit() is None or value >= self.limit()
        self.history.append({"step": step, **{k: values[k] for k in INDICATORS}, "healthy": healthy})
        if self.threshold > 0 and healthy:
            self.best_step = step
            if self.save_best is not None:
                self.save_best(step)
        if not healthy:
            self.stopped_at = step
        if self.state_path is not None:
            Path(self.state_path).write_text(json.dumps(
                {"history": self.history, "initial": self.initial, "best_step": self.best_step}, indent=1))
        return not healthy

    def at_step(self, step: int, accelerator, model, log: Callable[[dict], None]) -> bool:
        """Measure (every process, to stay in step), decide on the main process, agree everywhere."""
        # a forked RNG: the probe's sampling must not shift the training run's random stream
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            values = likelihood_indicators(model, self.tokenizer, self.prompts, self.k, self.max_new_tokens,
                                           self.seed, self.batch_size)
        stop = False
        if accelerator.is_main_process:
            stop = self.observe(step, values)
            log({f"overopt/{k}": values[k] for k in INDICATORS})
        if accelerator.num_processes > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=accelerator.device)
            stop = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
            self.stopped_at = step if stop else self.stopped_at
        return stop

    def summary(self, best_dir: Path | None = None) -> dict:
        reason = None
        if self.stopped_at is not None:
            reason = (f"{self.indicator} fell to {self.history[-1][self.indicator]:.4g} at step {self.stopped_at}, "
                      f"below {1 - self.threshold:.3g} x its step-0 value {self.initial:.4g}")
        return {"indicator": self.indicator, "k": self.k, "threshold": self.threshold, "initial": self.initial,
                "threshold_value": self.limit(), "stopped_early": self.stopped_at is not None, "stop_reason": reason,
                "best_step": self.best_step, "best_model": str(best_dir) if best_dir and self.best_step is not None
                else None, "history": self.history}
