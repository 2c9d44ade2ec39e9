"""The policy's mean NLL of the whole chosen sequence, prompt included: an extra policy row.

LongPO (arXiv:2502.13922) adds it on the long chosen sequence; ORPO's authors (arXiv:2403.07691,
xfactlab/orpo with --disable_prompt_loss unset) use it as their SFT term. The row is the chosen
sequence itself scored from its second token, so every token but the first counts.
"""

from __future__ import annotations

from prefalign.features.registry import FeatureSupplier, supplier


class ChosenSequenceNLL(FeatureSupplier):
    """Base: one extra policy row per example, the chosen sequence from its second token."""

    def tokenize(self, example, tokenized, builder):
        tokenized.policy_rows[self.name] = (tokenized.sequences[0], 0)

    def compute(self, step):
        rows, batch, tok = step.batch.extras[self.name], step.batch, step.token_logps
        counts = (batch.response_mask[rows, 1:] & batch.attention_mask[rows, 1:].bool()).sum(1)
        return {self.name: -tok[rows].sum(1) / counts.to(tok.dtype)}


@supplier
class PromptAndResponseNLL(ChosenSequenceNLL):
    name = "prompt_and_response_nll"
    description = ("'prompt_and_response_nll' [B]: mean per-token NLL of the whole chosen sequence, prompt and "
                   "response (every token but the first), under the policy, with grad (ORPO's authors' SFT term)")
