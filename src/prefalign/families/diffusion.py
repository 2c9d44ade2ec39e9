"""The diffusion family: a diffusers UNet2DModel with a DDPM scheduler, scored by its denoising error.

The surrogate log-likelihood of an image x0 is l(x0) = -mean over pixels of (eps_theta(x_t, t) -
eps)^2, with x_t the scheduler's add_noise(x0, eps, t). As in the Diffusion-DPO release, both
images of a pair share one timestep and one noise draw, and the reference is scored on exactly
the same x_t (FamilyTrainee passes the same seed to both). Epsilon prediction only.

Data: a safetensors file of pairs, "chosen" and "rejected" [N, C, H, W] in [-1, 1], optionally
"class_labels" [N] (for a class-conditional UNet). A model folder is what `save` writes:
UNet2DModel.save_pretrained (safetensors) plus the scheduler's scheduler_config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prefalign.families.base import family

WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class ImagePair:
    images: torch.Tensor  # [2, C, H, W]: chosen, rejected
    class_label: int | None = None
    max_len: int = 1  # the loop's length-grouped batching has nothing to group


def load_unet(folder: str | Path):
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusion model folder: it needs {WEIGHTS}, config.json "
                                "and scheduler_config.json (what the diffusion family's save writes)")
    unet = UNet2DModel.from_pretrained(folder, use_safetensors=True)
    scheduler = DDPMScheduler.from_pretrained(folder)
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"{folder}: the diffusion family scores epsilon prediction only, the scheduler says "
                         f"{scheduler.config.prediction_type!r}")
    return unet, scheduler


def read_pairs(path: str | Path) -> list[ImagePair]:
    """Pairs from a safetensors file, every tensor checked (a bad one is named with its row)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    missing = [k for k in ("chosen", "rejected") if k not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing}; a pairs file holds chosen and rejected [N, C, H, W]")
    chosen, rejected = tensors["chosen"].float(), tensors["rejected"].float()
    if chosen.dim() != 4 or chosen.shape != rejected.shape:
        raise ValueError(f"{path}: chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must both be "
                         "[N, C, H, W] of one shape")
    for name, x in (("chosen", chosen), ("rejected", rejected)):
        bad = (~torch.isfinite(x)).flatten(1).any(1) | (x.abs() > 1).flatten(1).any(1)
        if bad.any():
            raise ValueError(f"{path}: row {int(bad.nonzero()[0])}, field {name}: pixels must be finite and in [-1, 1]")
    labels = tensors.get("class_labels")
    if labels is not None and labels.shape != (chosen.shape[0],):
        raise ValueError(f"{path}: class_labels has shape {tuple(labels.shape)}, expected [{chosen.shape[0]}]")
    return [ImagePair(torch.stack([chosen[i], rejected[i]]), None if labels is None else int(labels[i]))
            for i in range(chosen.shape[0])]


def write_pairs(path: str | Path, chosen: torch.Tensor, rejected: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {"chosen": chosen.float().contiguous().clone(), "rejected": rejected.float().contiguous().clone()}
    if class_labels is not None:
        tensors["class_labels"] = class_labels.long().contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)  # never a half-written pairs file
    return Path(path)


@family("diffusion")
class DiffusionFamily:
    kinds = ("pairwise",)

    def __init__(self, scheduler=None, inference_steps: int = 100):
        self.scheduler, self.inference_steps = scheduler, inference_steps

    # --- what `prefalign train` calls -------------------------------------------------------------
    def init_model(self, path: str) -> torch.nn.Module:
        unet, self.scheduler = load_unet(path)
        return unet

    def load_examples(self, train: str, eval: str | None, eval_fraction: float, seed: int):
        from prefalign.data.formats.readers import seeded_split

        train_set = read_pairs(train)
        held_out = read_pairs(eval) if eval else None
        if held_out is None:
            train_set, held_out = seeded_split(train_set, eval_fraction, seed) if eval_fraction > 0 else (train_set, [])
        # every row is checked and none is skipped (a bad pairs file is an error naming row and field)
        report = {"train": {"rows": len(train_set) + (0 if eval else len(held_out)), "skipped": 0,
                            "skipped_by_reason": {}}, "train_examples": len(train_set), "eval_examples": len(held_out)}
        return train_set, held_out, report

    # --- the family protocol ----------------------------------------------------------------------
    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        picked = [examples[i] for i in indices]
        images = torch.stack([e.images for e in picked])
        batch = {"images": images, "attention_mask": torch.ones(images.shape[:2], dtype=torch.long)}
        labels = [e.class_label for e in picked]
        if any(label is not None for label in labels):
            if any(label is None for label in labels):
                raise ValueError("a batch mixes pairs with and without class labels")
            batch["class_labels"] = torch.tensor(labels)
        return batch

    def noisy_inputs(self, images: torch.Tensor, generator_seed: int):
        """(x_t, t, eps), flattened to [B * K, ...]: one timestep and one noise draw per pair,
        drawn on the CPU from the seed so that any device and any model see the same draw."""
        b, k = images.shape[:2]
        gen = torch.Generator().manual_seed(generator_seed)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=gen)
        eps = torch.randn((b, 1) + tuple(images.shape[2:]), generator=gen, dtype=images.dtype)
        eps = eps.to(images.device).expand_as(images).reshape(b * k, *images.shape[2:])
        t = t.to(images.device).repeat_interleave(k)
        return self.scheduler.add_noise(images.reshape(b * k, *images.shape[2:]), eps, t), t, eps

    def score(self, module: torch.nn.Module, batch: dict, generator_seed: int) -> torch.Tensor:
        images = batch["images"]
        b, k = images.shape[:2]
        x_t, t, eps = self.noisy_inputs(images, generator_seed)
        labels = batch.get("class_labels")
        labels = None if labels is None else labels.repeat_interleave(k)
        pred = module(x_t, t, class_labels=labels).sample
        return -(pred.float() - eps.float()).pow(2).flatten(1).mean(1).view(b, k)

    @torch.no_grad()
    def sample(self, module: torch.nn.Module, n: int, seed: int, class_labels: torch.Tensor | None = None,
               batch_size: int = 256) -> torch.Tensor:
        """n images [n, C, H, W] in [-1, 1] by DDPM ancestral sampling over `inference_steps` steps.
        One generator seeded once: the same seed gives the same starting noise and step noise, so two
        models sampled with one seed differ only by what they learned."""
        from diffusers import DDPMScheduler

        sched = DDPMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(self.inference_steps)
        cfg = module.config
        device = next(module.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((n, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen)
        was_training = module.training
        module.eval()
        for t in sched.timesteps:
            for s in range(0, n, batch_size):
                chunk = x[s:s + batch_size].to(device)
                labels = None if class_labels is None else class_labels[s:s + batch_size].to(device)
                eps = module(chunk, t.to(device), class_labels=labels).sample.float().cpu()
                x[s:s + batch_size] = sched.step(eps, t, x[s:s + batch_size], generator=gen).prev_sample
        module.train(was_training)
        return x.clamp(-1, 1)

    def save(self, module: torch.nn.Module, folder: Path) -> None:
        module.save_pretrained(folder, safe_serialization=True)
        self.scheduler.save_pretrained(folder)

    def load(self, module: torch.nn.Module, folder: Path) -> None:
        from safetensors.torch import load_file

        module.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
