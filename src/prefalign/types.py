"""Shared contracts between data, models, objectives and the trainer (torch only).

Every objective sees one `SeqLogps` per micro-batch and returns one `LossOut`. A batch holds B
prompts with up to K responses each; pairwise data is the K = 2 case (column 0 chosen, column 1
rejected), ranked lists are ragged K with `valid` marking real entries, unpaired data is K = 1
with a 0/1 label in `target`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SeqLogps:
    """Log-probabilities of a micro-batch of B prompts x K responses.

    policy:    [B, K] summed response log-probs under the policy being trained.
    reference: [B, K] the same under the reference policy, or None (reference-free objectives).
    n_tokens:  [B, K] number of response tokens (float), or None where unknown.
    valid:     [B, K] bool, False for padding entries of ragged lists.
    target:    [B, K] float preference signal. Pairs: [1, 0] (chosen, rejected). Lists: scores,
               higher is better. Unpaired: 1 desirable / 0 undesirable.
    features:  extra statistics an objective asked for by name (e.g. "policy_token_logps"
               [B, K, T] with "token_mask" [B, K, T], "reference_token_logps", soft labels).
    """

    policy: torch.Tensor
    reference: torch.Tensor | None = None
    n_tokens: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    target: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy.dim() != 2:
            raise ValueError(f"SeqLogps.policy must be [B, K], got shape {tuple(self.policy.shape)}")
        shape = self.policy.shape
        for name in ("reference", "n_tokens", "valid", "target"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"SeqLogps.{name} has shape {tuple(value.shape)}, policy has {tuple(shape)}")
        if self.valid is None:
            self.valid = torch.ones(shape, dtype=torch.bool, device=self.policy.device)
        if self.target is None and shape[1] == 2:
            self.target = torch.tensor([1.0, 0.0], dtype=self.policy.dtype, device=self.policy.device).expand(shape)

    @property
    def batch_size(self) -> int:
        return self.policy.shape[0]

    def logratio(self) -> torch.Tensor:
        """[B, K] policy - reference log-probs (the implicit reward up to beta)."""
        if self.reference is None:
            raise ValueError("this objective needs reference log-probs, but the batch has none")
        return self.policy - self.reference

    def lengths(self) -> torch.Tensor:
        """[B, K] response token counts as floats; an error if the caller did not supply them."""
        if self.n_tokens is None:
            raise ValueError("this objective needs response lengths (n_tokens / chosen_lengths, rejected_lengths)")
        return self.n_tokens.to(self.policy.dtype)

    def feature(self, name: str) -> torch.Tensor:
        if name not in self.features:
            raise ValueError(f"this objective needs the feature {name!r}, which the batch does not carry")
        return self.features[name]


@dataclass
class LossOut:
    """What an objective returns.

    per_example: [B] loss per prompt; the trainer alone reduces it (train/reduce.py).
    rewards:     [B, K] detached implicit rewards (beta * (policy - reference) logps, or the
                 objective's own reward where it is reference-free); drives the reward metrics.
    extras:      detached scalar diagnostics (already means over the batch), e.g. "nll".
    """

    per_example: torch.Tensor
    rewards: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
