"""The model-family interface.

An objective is a function of [B, K] per-sample (surrogate) log-likelihoods: summed token
log-probs for a causal LM, minus the denoising error for a diffusion model, summed step
log-likelihoods (or a learned return) for a trajectory policy. A family says how its model
scores a batch of samples; `FamilyTrainee` turns that into the Trainee the loop already trains
(train/trainee.py), so the registry, the loop, checkpoints, resume and metrics are reused as they are.

A family provides:
  make_batch(examples, indices, split) -> dict of host tensors with an "attention_mask" (the
      loop moves them to the device and counts tokens from it) and, optionally, "target" [B, K]
      and "valid" [B, K];
  score(module, batch, generator_seed) -> [B, K] surrogate log-likelihoods, differentiable in
      the module's parameters. The policy and the reference are scored with the same seed, so a
      stochastic surrogate (a diffusion timestep and noise) sees the same draw in both;
  sample(module, n, seed) -> n samples (the family's own type), for evaluation and online rounds;
  save(module, folder) / load(module, folder): safetensors weights in place.
Examples handed to the loop need a `max_len` attribute (used for length-grouped batching).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from prefalign.losses import Objective
from prefalign.train.step import run_objective
from prefalign.types import SeqLogps


class ModelFamily(Protocol):
    name: str
    # objective kinds this family can feed (an objective needing features it cannot supply is refused)
    kinds: tuple[str, ...]

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict: ...

    def score(self, module: torch.nn.Module, batch: dict, generator_seed: int) -> torch.Tensor: ...

    def sample(self, module: torch.nn.Module, n: int, seed: int) -> list: ...

    def save(self, module: torch.nn.Module, folder: Path) -> None: ...

    def load(self, module: torch.nn.Module, folder: Path) -> None: ...


FAMILIES: dict[str, type] = {}


def family(name: str):
    """Register a family class under `name` (the config's `family:` key)."""
    def wrap(cls):
        if name in FAMILIES:
            raise ValueError(f"family {name!r} is registered twice")
        cls.name = name
        FAMILIES[name] = cls
        return cls
    return wrap


def get_family(name: str) -> type:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def check_trainable(fam: ModelFamily, objective: Objective) -> None:
    """Fail before step 0 when the family cannot produce what the objective reads."""
    if objective.kind not in fam.kinds:
        raise ValueError(f"family {fam.name!r} trains objectives of kinds {list(fam.kinds)}; "
                         f"{objective.name!r} is {objective.kind!r}")
    if objective.features:
        raise ValueError(f"objective {objective.name!r} needs features {list(objective.features)}, "
                         f"which family {fam.name!r} does not supply")


class FamilyTrainee:
    """A Trainee (train/trainee.py) for any family: both models score the batch with one seed per
    micro-batch (drawn from the loop's seeded torch generator, so resume replays it), and the
    objective sees SeqLogps exactly as it does for a causal LM."""

    def __init__(self, accelerator, fam: ModelFamily, module: torch.nn.Module, reference: torch.nn.Module | None,
                 objective: Objective, objective_params: dict):
        check_trainable(fam, objective)
        if objective.needs_reference and reference is None:
            raise ValueError(f"objective {objective.name!r} needs a reference model")
        self.accelerator, self.family, self.module, self.reference = accelerator, fam, module, reference
        self.objective, self.params = objective, objective_params

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        return self.family.make_batch(examples, indices, split)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        policy = self.family.score(self.module, batch, seed)
        reference = None
        if self.reference is not None and self.objective.needs_reference:
            with torch.no_grad():
                reference = self.family.score(self.reference, batch, seed)
        target, valid = batch.get("target"), batch.get("valid")
        seq = SeqLogps(policy=policy, reference=reference, valid=valid,
                       target=None if target is None else target.to(policy.dtype))
        out, metrics = run_objective(self.objective, seq, self.params)
        return out.per_example, metrics

    def save(self, folder: Path) -> None:
        self.family.save(self.accelerator.unwrap_model(self.module), folder)

    def load(self, folder: Path) -> None:
        self.family.load(self.accelerator.unwrap_model(self.module), folder)
