"""SparsePO's activation masks (prefalign.models.activations): token weights from the reference's activations."""

from __future__ import annotations

from prefalign.models.activations import check_supported
from prefalign.features.registry import FeatureSupplier, supplier


@supplier
class ActivationMask(FeatureSupplier):
    name = "activation_mask"
    description = ("'activation_mask' [B, K, T] in [0, 1]: per-token weights from the reference model's "
                   "activations (SparsePO's activation masks; recipe in token_level.sparsepo_act), no grad")
    reference_output = "activations"
    token_reference = True

    def check_model(self, model):
        check_supported(model)  # an unsupported architecture fails here, before any training

    def compute(self, step):
        out = step.reference_out
        if out is None or out.activation_mask is None:
            return {}
        return {self.name: step.slots(out.activation_mask)}
