"""Per-example numbers that come with the data as row fields (data.records.DATA_FEATURES).

The reader keeps them in Example.extra["features"] and collate turns them into [B] or [B, M]
tensors in batch.extras; the step hands them to the objective as they are.
"""

from __future__ import annotations

from prefalign.features.registry import FeatureSupplier, supplier


class RowField(FeatureSupplier):
    def __init__(self):
        self.row_field = self.name

    def compute(self, step):
        return {self.name: step.batch.extras[self.name]}


@supplier
class SoftLabel(RowField):
    name = "soft_label"
    description = "an empirical preference probability per pair (feature 'soft_label' [B])"


@supplier
class RewardMargins(RowField):
    name = "reward_margins"
    description = "margins of other rewards per pair (feature 'reward_margins' [B, M])"


@supplier
class AlignedLogps(RowField):
    name = "aligned_logps"
    description = "log-probs of the response under one or more aligned models (feature 'aligned_logps' [B, M])"
