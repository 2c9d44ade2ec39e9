"""diffusion-digits: Diffusion-DPO (and MaPO, DeformPAM's variant, SePPO) on scikit-learn's 8x8 digits.

Testbed (offline): a small diffusers UNet2DModel pre-trained here on load_digits (1797 images)
with the DDPM loss; a programmatic preference: "is digit k" by a LogisticRegression trained on
the same digits. Pairs are two samples of the pre-trained model ordered by the classifier's
P(k | x). Each objective then trains through `prefalign train` with family: diffusion.

Checks (each can fail): on fresh samples drawn with the same seeds from the reference and the
aligned model, the share the rule prefers (classified as k) rises; the winners' denoising error
stays near the reference's (no collapse); the larger beta moves the model less.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from prefalign.reproduce.claims import ClaimResult, Verdict, claim

DIGIT = 0  # the preferred digit of the rule: is the sample a 0?
RULE = f"classified as digit {DIGIT} by a LogisticRegression on load_digits"


@dataclass
class Setting:
    channels: tuple = (16, 32)
    attention: bool = True  # an attention block at 4x4, as in diffusers' own small DDPM test model
    pretrain_steps: int = 1500
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3
    inference_steps: int = 50
    pairs: int = 512
    align_steps: int = 200
    align_batch: int = 16
    align_lr: float = 1e-4
    betas: tuple = (2000.0, 20000.0)  # Diffusion-DPO's beta_dpo: the smaller one is the main run
    eval_samples: int = 512
    mse_draws: int = 8  # (t, eps) draws averaged per winner for the no-collapse check


# the test's setting: every step of the claim runs, on a model too small and too briefly trained to mean much
QUICK = Setting(channels=(8, 16), attention=False, pretrain_steps=30, pretrain_batch=32, inference_steps=8, pairs=24,
                align_steps=2, align_batch=8, eval_samples=16, mse_draws=1)


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """load_digits as [1797, 1, 8, 8] in [-1, 1] (pixel values 0..16) and the labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return x, torch.tensor(d.target)


def classifier():
    """P(digit | image in [-1, 1]) from a LogisticRegression fitted on all of load_digits."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    model = LogisticRegression(max_iter=2000).fit(d.data, d.target)

    def probs(images: torch.Tensor) -> torch.Tensor:
        pixels = ((images.clamp(-1, 1) + 1.0) * 8.0).reshape(len(images), -1).numpy()
        return torch.tensor(model.predict_proba(pixels), dtype=torch.float32)

    return probs


def new_unet(channels: tuple, attention: bool):
    from diffusers import UNet2DModel

    inner = "Attn" if attention else ""
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=channels, layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", f"{inner}DownBlock2D"),
                       up_block_types=(f"{inner}UpBlock2D", "UpBlock2D"))


def pretrain(folder: Path, s: Setting, seed: int = 0) -> Path:
    """The reference: the DDPM loss on load_digits, written as a diffusion-family model folder."""
    from diffusers import DDPMScheduler

    from prefalign.families.diffusion import DiffusionFamily
    from prefalign.train.checkpoint import write_atomic

    if (folder / "scheduler_config.json").is_file():
        return folder  # cached pre-training of an earlier run with the same setting
    torch.manual_seed(seed)
    images, _ = digit_images()
    unet, scheduler = new_unet(s.channels, s.attention), DDPMScheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=s.pretrain_lr)
    lr = torch.optim.lr_scheduler.OneCycleLR(optimizer, s.pretrain_lr, total_steps=s.pretrain_steps, pct_start=0.05)
    for _ in range(s.pretrain_steps):
        x0 = images[torch.randint(0, len(images), (s.pretrain_batch,))]
        eps = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),))
        loss = (unet(scheduler.add_noise(x0, eps, t), t).sample - eps).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr.step()
        optimizer.zero_grad(set_to_none=True)
    fam = DiffusionFamily(scheduler)
    write_atomic(folder, lambda tmp: fam.save(unet.eval(), tmp))
    return folder


def sample(folder: Path, n: int, seed: int, steps: int) -> torch.Tensor:
    from prefalign.families.diffusion import DiffusionFamily

    fam = DiffusionFamily(inference_steps=steps)
    return fam.sample(fam.init_model(str(folder)), n, seed)


def make_pairs(base: Path, path: Path, s: Setting, probs) -> dict:
    """2 x pairs samples of the reference, paired in order; the higher P(DIGIT | x) is chosen."""
    from prefalign.families.diffusion import write_pairs

    x = sample(base, 2 * s.pairs, seed=1, steps=s.inference_steps)
    a, b = x[0::2], x[1::2]
    pa, pb = probs(a)[:, DIGIT], probs(b)[:, DIGIT]
    a_wins = (pa >= pb)[:, None, None, None]
    write_pairs(path, torch.where(a_wins, a, b), torch.where(a_wins, b, a))
    return {"pairs": s.pairs, "mean_gap": float((pa - pb).abs().mean())}


def align(base: Path, pairs: Path, out: Path, objective: str, beta: float | None, s: Setting,
          steps: int | None = None) -> Path:
    """One `prefalign train` run with family: diffusion."""
    from prefalign.config import DataConfig, TrainConfig, validate
    from prefalign.recipes.family import train_family

    cfg = TrainConfig(family="diffusion", family_args={"inference_steps": s.inference_steps}, model=str(base),
                      data=DataConfig(train=str(pairs), eval_fraction=0.1), objective=objective, beta=beta,
                      output_dir=str(out), max_steps=steps or s.align_steps, batch_size=s.align_batch,
                      learning_rate=s.align_lr, warmup_ratio=0.1, lr_scheduler="constant", seed=0,
                      eval_batch_size=64, logging_steps=max(1, s.align_steps // 10), progress=False, overwrite=True)
    validate(cfg)
    train_family(cfg)
    return out / "final"


def seppo_rounds(base: Path, out: Path, s: Setting, rounds: int = 2) -> Path:
    """SePPO: each round pairs real digits DIGIT of load_digits (off-policy winners only) with samples of
    the previous checkpoint, which is also the round's reference (the run's starting weights)."""
    from prefalign.families.diffusion import write_pairs

    images, labels = digit_images()
    winners = images[labels == DIGIT]
    g = torch.Generator().manual_seed(3)
    model = base
    for r in range(rounds):
        reference_samples = sample(model, s.pairs, seed=100 + r, steps=s.inference_steps)
        chosen = winners[torch.randint(0, len(winners), (s.pairs,), generator=g)]
        pairs = write_pairs(out / f"seppo-round{r + 1}.safetensors", chosen, reference_samples)
        model = align(model, pairs, out / "runs" / f"seppo_round{r + 1}", "seppo", s.betas[0], s,
                      steps=max(1, s.align_steps // rounds))
    return model


@torch.no_grad()
def winner_mse(folder: Path, pairs: Path, s: Setting) -> float:
    """Mean denoising error of the held-out winners (the last 10% of pairs) at fixed (t, eps) draws."""
    from prefalign.families.diffusion import DiffusionFamily, read_pairs

    fam = DiffusionFamily()
    unet = fam.init_model(str(folder)).eval()
    held = read_pairs(pairs)[-max(4, s.pairs // 10):]
    batch = fam.make_batch(held, list(range(len(held))), "eval")
    return float(sum(-fam.score(unet, batch, 1000 + d)[:, 0].mean() for d in range(s.mse_draws)) / s.mse_draws)


def evaluate(folder: Path, probs, s: Setting) -> dict:
    x = sample(folder, s.eval_samples, seed=7, steps=s.inference_steps)
    p = probs(x)
    return {"share": float((p.argmax(1) == DIGIT).float().mean()), "p_digit": float(p[:, DIGIT].mean()),
            "images": x}


def save_grid(path: Path, grids: dict[str, torch.Tensor], per_row: int = 16, rows: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 1.0 + 0.8 * rows))
    for ax, (title, x) in zip(axes, grids.items()):
        x = x[: per_row * rows, 0]
        tiles = torch.ones(rows * 9 - 1, per_row * 9 - 1)
        for i in range(len(x)):
            r, c = divmod(i, per_row)
            tiles[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = (x[i] + 1) / 2
        ax.imshow(1 - tiles.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-4) / n)


@claim("diffusion-digits", paper="Diffusion-DPO (arXiv:2311.12908); MaPO (arXiv:2406.06424)",
       paper_claim="Diffusion-DPO raises the preferred outcome over the reference model (DPO-SDXL beats SDXL in "
                   "human evaluation); a larger beta stays closer to the reference")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    s = QUICK if quick else Setting()
    out_dir = Path(out_dir)
    torch.manual_seed(0)
    base = pretrain(out_dir / "base", s)
    probs = classifier()
    pairs = out_dir / "pairs.safetensors"
    pair_stats = make_pairs(base, pairs, s, probs)
    ref = evaluate(base, probs, s)
    ref_mse = winner_mse(base, pairs, s)
    runs = [("diffusion_dpo", s.betas[0]), ("diffusion_dpo", s.betas[1]), ("mapo", None), ("deformpam_dpo", None)]
    rows, grids = [], {"reference": ref["images"]}
    for objective, beta in runs:
        name = objective if beta is None else f"{objective} beta={beta:g}"
        final = align(base, pairs, out_dir / "runs" / name.replace(" ", "_").replace("=", ""), objective, beta, s)
        ev = evaluate(final, probs, s)
        same_seed = float((probs(ev["images"]).argmax(1) != probs(ref["images"]).argmax(1)).float().mean())
        rows.append({"objective": name, "share": round(ev["share"], 4), "p_digit": round(ev["p_digit"], 4),
                     "winner_mse": round(winner_mse(final, pairs, s), 5), "changed_samples": round(same_seed, 4)})
        if len(grids) < 3:
            grids[name] = ev["images"]
    # SePPO (reconstructed anchor rule): shown in the table, not part of the verdict
    final = seppo_rounds(base, out_dir, s)
    ev = evaluate(final, probs, s)
    rows.append({"objective": "seppo (2 rounds, reconstruction)", "share": round(ev["share"], 4),
                 "p_digit": round(ev["p_digit"], 4), "winner_mse": round(winner_mse(final, pairs, s), 5),
                 "changed_samples": round(float((probs(ev["images"]).argmax(1) !=
                                                 probs(ref["images"]).argmax(1)).float().mean()), 4)})
    rows.insert(0, {"objective": "reference", "share": round(ref["share"], 4), "p_digit": round(ref["p_digit"], 4),
                    "winner_mse": round(ref_mse, 5), "changed_samples": 0.0})
    save_grid(out_dir / "diffusion_digits.png", grids)
    return verdict(rows, s, pair_stats, quick)


def verdict(rows: list[dict], s: Setting, pair_stats: dict, quick: bool) -> ClaimResult:
    ref, small, large = rows[0], rows[1], rows[2]
    se = math.hypot(binomial_se(ref["share"], s.eval_samples), binomial_se(small["share"], s.eval_samples))
    gain = small["share"] - ref["share"]
    mse_ratio = small["winner_mse"] / ref["winner_mse"]
    moved_small, moved_large = small["changed_samples"], large["changed_samples"]
    checks = {"share_rises": gain > 2 * se, "no_collapse": mse_ratio < 1.25, "larger_beta_moves_less":
              moved_large < moved_small}
    numbers = {"setting": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(s).items()},
               "pairs": pair_stats, "share_gain": gain, "share_gain_se": se, "winner_mse_ratio": mse_ratio,
               "checks": checks, "rows": rows}
    measured = (f"share of fresh samples that are a {DIGIT}: reference {ref['share']:.3f} -> Diffusion-DPO "
                f"(beta {s.betas[0]:g}) {small['share']:.3f} ({gain:+.3f}, 2 SE {2 * se:.3f}); winners' denoising "
                f"error x{mse_ratio:.2f} of the reference's; samples changed at the same seed: beta {s.betas[0]:g} "
                f"{moved_small:.2f}, beta {s.betas[1]:g} {moved_large:.2f}")
    if gain < 0 or mse_ratio >= 1.5 or (checks["share_rises"] and not checks["larger_beta_moves_less"]):
        v = Verdict.FAIL
    elif all(checks.values()):
        v = Verdict.PASS
    else:
        v = Verdict.INCONCLUSIVE
    reason = ("PASS needs all three: share gain > 2 binomial SE, winners' error ratio < 1.25, fewer samples "
              "changed at the larger beta; FAIL when the share falls, the error ratio reaches 1.5, or the share "
              f"rises but the larger beta moves more. Checks: {json.dumps(checks)}")
    return ClaimResult(v, measured, reason, numbers, ["diffusion_digits.png"], rows)
