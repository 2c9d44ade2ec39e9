"""The one list of feature suppliers: what an objective's declared features need from the run.

An objective declares `features=(...)` by name; a supplier registered under that name owns
everything the trainer must do for it, as optional hooks:
  check      the data can supply it (before tokenization, with file and row in the message)
  check_model  the model can give it (before any training)
  tokenize   the extra rows it needs, built with the list rows' rules (data.tokenize.RowBuilder)
  collate    tensors it adds to a batch beyond what data.collate builds from the examples
  compute    tensors it puts into SeqLogps.features, inside the step (features.step.Step)
and as attributes: a row field it reads, whether it needs a live reference model (and which
extra output of the reference forward), whether a precomputed reference can score its rows.
Adding a paper's input is one supplier module here; train/, data/ and run.py stay as they are.
"""

from __future__ import annotations

import difflib

import torch

from prefalign.models.causal_lm import to_slots


class FeatureSupplier:
    """Base supplier: every hook does nothing. Subclasses set `name` and override what they own."""

    name: str = ""
    description: str = ""
    # a pairs row field holding this feature's input ("" when none); the data check requires it
    row_field: str = ""
    # why the step needs a live reference model for this feature ("" when it does not):
    # a precomputed reference caches sequence sums only
    live_reference: str = ""
    # what reference.features() must also return for it: "rows" (token KL), "layers" (mask head),
    # "activations" (activation masks); the reference then runs before the policy
    reference_output: str = ""
    # it reads per-token reference values of the list rows (LongPO's short-context reference cannot give them)
    token_reference: bool = False
    options: tuple[str, ...] = ()  # tokenize_examples options it reads
    excludes: tuple[str, ...] = ()  # features whose extra rows cannot be combined with this one's

    def check(self, objective, examples: list, label: str) -> None:
        if not self.row_field:
            return
        lacking = next((e for e in examples if self.row_field not in e.extra
                        and self.row_field not in e.extra.get("features", {})), None)
        if lacking is not None:
            raise ValueError(f"objective {objective.name!r} needs the field {self.row_field!r} on every row; "
                             f"{lacking.source} has none")

    def check_model(self, model) -> None:
        """Refuse a model this feature cannot be computed on, before any training (raise ValueError)."""

    def tokenize(self, example, tokenized, builder) -> None:
        """Add extra rows to `tokenized` (policy_rows / side_rows under self.name)."""

    def collate(self, examples: list, batch, pad_id: int, pad_multiple: int, pack=None) -> None:
        """Add tensors to batch.extras that data.collate cannot build from the examples alone
        (row batches it builds are packed with `pack`, packing.PackOptions, when given)."""

    def reference_rows(self, batch):
        """The rows the reference scores for the K responses instead of the list rows, or None."""
        return None

    def reference_values(self, tok: torch.Tensor, batch) -> torch.Tensor | None:
        """[B] values of this feature's rows to store for a precomputed reference, or None."""
        return None

    def check_step(self, step, active: list[FeatureSupplier]) -> None:
        """Refuse a combination of features this one cannot serve (raise ValueError)."""

    def compute(self, step) -> dict[str, torch.Tensor]:
        """Entries of SeqLogps.features for this feature."""
        return {}


SUPPLIERS: dict[str, FeatureSupplier] = {}


def supplier(cls: type[FeatureSupplier]) -> type[FeatureSupplier]:
    """Class decorator registering an instance of `cls` under cls.name."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no feature name")
    if cls.name in SUPPLIERS:
        raise ValueError(f"feature {cls.name!r} has two suppliers")
    SUPPLIERS[cls.name] = cls()
    return cls


def get_supplier(name: str) -> FeatureSupplier:
    if name not in SUPPLIERS:
        close = difflib.get_close_matches(name, SUPPLIERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no supplier for feature {name!r}.{hint} Known: {', '.join(sorted(SUPPLIERS))}")
    return SUPPLIERS[name]


def for_features(names) -> list[FeatureSupplier]:
    """The suppliers of `names` in registration order (so extra rows always sit in the same order)."""
    wanted = set(names)
    return [s for name, s in SUPPLIERS.items() if name in wanted]


def unsupplied(names) -> list[str]:
    return [n for n in names if n not in SUPPLIERS]


class Step:
    """What one micro-batch's forward produced, for the suppliers' `compute` hooks.

    policy_out: the policy forward's dict ("token_logps" [N_all, T], and "token_kl" / "mask_logits"
    when the reference's states went in); reference_out: models.ReferenceOut when a supplier asked
    for an extra reference output; reference_token_logps: the live reference's token log-probs of the
    rows it scored (None with a precomputed reference or none).
    """

    def __init__(self, policy, reference, batch):
        self.policy, self.reference, self.batch = policy, reference, batch
        self.policy_out: dict = {}
        self.reference_out = None
        self.reference_token_logps: torch.Tensor | None = None

    @property
    def token_logps(self) -> torch.Tensor:
        return self.policy_out["token_logps"]

    def slots(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row values of the N list rows [N_all, ...] -> [B, K, ...] slots."""
        return to_slots(values[: self.batch.n_rows], self.batch.row_index, self.batch.shape)
