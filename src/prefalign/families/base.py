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
A family may also list the objective features it supplies (`supplies`, default none).

`prefalign train` with `family: NAME` builds the family as `cls(**family_args)` and, for any family
but causal_lm (which keeps its own recipe, recipes/policy.py), also calls
  init_model(path) -> module: the starting weights from a folder (the config's `model`);
  load_examples(train, eval, eval_fraction, seed) -> (train, eval, report): the config's data;
      report["train"] holds "rows", "skipped" and "skipped_by_reason" (summary.json and the console read them).

Families register with @family in their own module of this package; `get_family` imports every
module of prefalign.families first, so a new family needs no entry in a shared list.
"""

from __future__ import annotations

import importlib
import pkgutil
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


def load_families() -> dict[str, type]:
    """Import every module of prefalign.families (each registers its families on import)."""
    # the package's folder, not `import prefalign.families` (that would make base.py and the package a circle)
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__name__.rpartition('.')[0]}.{info.name}")
    return FAMILIES


def get_family(name: str) -> type:
    load_families()
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def cannot_train(fam, objective: Objective) -> str | None:
    """Why the family (class or instance) cannot feed the objective, or None when it can."""
    if objective.kind not in fam.kinds:
        return (f"family {fam.name!r} trains objectives of kinds {list(fam.kinds)}; "
                f"{objective.name!r} is {objective.kind!r}")
    missing = [f for f in objective.features if f not in getattr(fam, "supplies", ())]
    if missing:
        return f"objective {objective.name!r} needs features {missing}, which family {fam.name!r} does not supply"
    return None


def check_trainable(fam: ModelFamily, objective: Objective) -> None:
    """Fail before step 0 when the family cannot produce what the objective reads."""
    reason = cannot_train(fam, objective)
    if reason:
        raise ValueError(reason)


def families_for(objective: Objective) -> list[str]:
    """The registered families that can train `objective` (the `prefalign objectives` column)."""
    return [name for name, cls in sorted(load_families().items()) if cannot_train(cls, objective) is None]


EVAL_SEED = 12345


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
        # evaluation (module in eval mode) uses one fixed seed: held-out metrics are then a function of the
        # weights alone, comparable across evaluations, and evaluating leaves the training draws untouched
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if self.module.training else EVAL_SEED
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
