"""Per-token log-probs of the policy (and a live reference) with the mask of scored tokens."""

from __future__ import annotations

import torch

from prefalign.features.registry import FeatureSupplier, supplier


@supplier
class TokenLogps(FeatureSupplier):
    name = "token_logps"
    description = ("per-token log-probs: 'policy_token_logps', 'token_mask' and, with a live reference, "
                   "'reference_token_logps', each [B, K, T]")
    live_reference = "per-token reference log-probs"
    token_reference = True

    def compute(self, step):
        batch = step.batch
        mask = torch.zeros_like(batch.response_mask[: batch.n_rows])
        mask[:, 1:] = batch.scored_mask(batch.n_rows)
        out = {"policy_token_logps": step.slots(step.token_logps), "token_mask": step.slots(mask)}
        if step.reference_token_logps is not None:
            out["reference_token_logps"] = step.slots(step.reference_token_logps)
        return out
