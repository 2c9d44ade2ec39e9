"""KTO's KL reference point (arXiv:2402.01306): policy - reference log-probs of mismatched
(prompt, completion) pairs built from the same micro-batch (data.collate.mismatched)."""

from __future__ import annotations

import torch

from prefalign.data.collate import collate, mismatched
from prefalign.features.registry import FeatureSupplier, supplier
from prefalign.models.causal_lm import model_args, sequence_sums


@supplier
class KLLogratio(FeatureSupplier):
    name = "kl_logratio"
    description = ("KTO reference point: features['kl_logratio'] [B] (or a 0-dim mean) policy - reference summed "
                   "log-probs of mismatched pairs (prompt x_i, completion y_(i+1 mod B)) of the same batch")
    live_reference = "its KL reference point from mismatched pairs of each batch"

    def collate(self, examples, batch, pad_id, pad_multiple, pack=None):
        batch.extras[self.name] = collate(mismatched(examples), pad_id, pad_multiple, pack)

    def compute(self, step):
        return {self.name: mismatched_logratio(step.policy, step.reference, step.batch.extras[self.name])}


@torch.no_grad()
def mismatched_logratio(policy, reference, mis) -> torch.Tensor:
    """[B] policy - reference log-probs of mismatched (prompt, completion) pairs, no gradient:
    KTO's z0 is detached, so this forward needs no graph."""
    if reference is None:
        raise ValueError("the KL reference point needs a live reference model (reference=frozen or adapter_off)")
    pol, _ = sequence_sums(policy(*model_args(mis)), mis)
    ref, _ = sequence_sums(reference(mis), mis)
    return (pol - ref)[:, 0]
