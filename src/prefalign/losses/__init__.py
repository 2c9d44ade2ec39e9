"""Preference objectives: pure functions on log-probabilities, one registry by name.

Imports torch and prefalign.types only, so that `import prefalign.losses` works without
transformers. Each family module registers its objectives on import.
"""

from __future__ import annotations

import torch

from prefalign.losses.registry import OBJECTIVES, Objective, get_objective, no_beta_message, objective
from prefalign.types import LossOut, SeqLogps

# Family modules: importing them registers their objectives.
from prefalign.losses import (  # noqa: F401  (registration side effect)
    diffusion,
    listwise,
    multi_objective,
    negatives,
    online,
    pairwise,
    reference_free,
    sft,
    token_level,
    trajectory,
    triples,
    trl_family,
    unpaired,
)

__all__ = ["OBJECTIVES", "Objective", "LossOut", "SeqLogps", "available", "get_objective",
           "objective", "pairwise_loss"]


def available() -> dict[str, str]:
    """Registered objective names with their one-line descriptions."""
    return {name: OBJECTIVES[name].summary for name in sorted(OBJECTIVES)}


def pairwise_loss(
    name: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    **params,
) -> torch.Tensor:
    """Per-example loss [B] of a registered pairwise objective, for your own training loop.

    Inputs are [B] summed response log-probs (float32 or float64); `chosen_lengths` and
    `rejected_lengths` are response token counts for length-normalised objectives. `params`
    carries the objective's other hyper-parameters (see `available()` and each docstring).
    `beta` unset uses the objective's own default (simpo 2.0, longpo 0.01, ...); an objective
    without a beta (orpo, sppo_hard, ...) refuses one, as the config does.
    """
    obj = get_objective(name)
    if beta is not None and "beta" not in obj.params:
        raise ValueError(no_beta_message(obj))
    if obj.needs_reference and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"objective {name!r} needs ref_chosen_logps and ref_rejected_logps")
    policy = torch.stack([policy_chosen_logps, policy_rejected_logps], dim=1)
    reference = None
    if ref_chosen_logps is not None and ref_rejected_logps is not None:
        reference = torch.stack([ref_chosen_logps, ref_rejected_logps], dim=1).to(policy.dtype)
    n_tokens = None
    if chosen_lengths is not None and rejected_lengths is not None:
        n_tokens = torch.stack([torch.as_tensor(chosen_lengths), torch.as_tensor(rejected_lengths)], 1)
        n_tokens = n_tokens.to(device=policy.device, dtype=policy.dtype)
    features = params.pop("features", {})
    batch = SeqLogps(policy=policy, reference=reference, n_tokens=n_tokens, features=features)
    if beta is not None:
        params["beta"] = beta
    return obj(batch, **params).per_example
