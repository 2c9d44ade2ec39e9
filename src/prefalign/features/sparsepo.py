"""SparsePO's token KL and learned mask head (arXiv:2410.05102): both need the reference's
forward on the same batch first, since the policy's forward reads its states (models.PolicyLogps)."""

from __future__ import annotations

from prefalign.features.registry import FeatureSupplier, supplier


class PolicyOutput(FeatureSupplier):
    """A [B, K, T(, 2)] output of the policy's forward computed against the reference's states."""

    token_reference = True

    def compute(self, step):
        return {self.name: step.slots(step.policy_out[self.name])} if self.name in step.policy_out else {}


@supplier
class TokenKL(PolicyOutput):
    name = "token_kl"
    description = ("'token_kl' [B, K, T]: per response position t, KL(pi_ref(.|x, y_<t) || pi(.|x, y_<t)) over "
                   "the full vocabulary, sum_v p_ref(v) (log p_ref(v) - log p(v)), >= 0, with grad through the policy")
    reference_output = "rows"


@supplier
class MaskLogits(PolicyOutput):
    name = "mask_logits"
    description = ("'mask_logits' [B, K, T] (common mask) or [B, K, T, 2] (independent masks): the policy's "
                   "mask head on the reference's layer outputs, with grad into the head")
    reference_output = "layers"
