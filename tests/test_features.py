"""Feature suppliers: the registry is the one list of what objectives may declare, and a new input
plugs in from outside train/, data/ and run (a fake feature and objective train end to end)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from prefalign.config import load_config
from prefalign.data.records import DATA_FEATURES, PROMPT_FIELDS, RESPONSE_FIELDS
from prefalign.features import SUPPLIERS, FeatureSupplier, supplier
from prefalign.losses import OBJECTIVES, objective
from prefalign.recipes.policy import SUPPLIED, train
from prefalign.types import LossOut, SeqLogps
from tests_support import FIXTURES


def test_every_objective_feature_has_a_supplier():
    declared = {f for o in OBJECTIVES.values() for f in o.features}
    assert declared and declared <= set(SUPPLIERS) == set(SUPPLIED)
    assert all(s.description for s in SUPPLIERS.values())


def test_row_fields_the_reader_keeps_are_the_suppliers_row_fields():
    # data/ sits below features/, so the reader's field lists cannot be read from the registry;
    # this keeps the two from drifting apart
    fields = {s.row_field for s in SUPPLIERS.values() if s.row_field}
    assert fields == set(DATA_FEATURES) | set(RESPONSE_FIELDS) | set(PROMPT_FIELDS)


CAPTURED: list[dict] = []


@pytest.fixture
def fake_feature():
    """A supplier that scores the chosen response again as an extra policy row (its mean NLL) and
    adds a per-example weight at collate time, and an objective that adds that weighted NLL to DPO."""

    @supplier
    class ChosenAgain(FeatureSupplier):
        name = "test_chosen_again"
        description = "'chosen_nll' [B]: mean NLL of the chosen response from an extra policy row; 'nll_weight' [B]"

        def tokenize(self, example, tokenized, builder):
            tokenized.policy_rows[self.name] = (tokenized.sequences[0], tokenized.response_starts[0])

        def collate(self, examples, batch, pad_id, pad_multiple, pack=None):
            batch.extras["test_nll_weight"] = torch.full((len(examples),), 0.5)

        def compute(self, step):
            rows, batch = step.batch.extras[self.name], step.batch
            counts = batch.scored_mask()[rows].sum(1)
            return {"chosen_nll": -step.token_logps[rows].sum(1) / counts,
                    "nll_weight": batch.extras["test_nll_weight"]}

    @objective("test_dpo_plus_nll", kind="pairwise", paper="", reference=True, features=("test_chosen_again",))
    def dpo_plus_nll(batch: SeqLogps, *, beta: float = 0.1) -> LossOut:
        """DPO plus a weighted NLL of the chosen response (a test objective)."""
        CAPTURED.append({k: v for k, v in batch.features.items()} | {"policy": batch.policy, "n": batch.n_tokens})
        rewards = beta * (batch.policy - batch.reference).detach()
        logits = beta * ((batch.policy[:, 0] - batch.reference[:, 0]) - (batch.policy[:, 1] - batch.reference[:, 1]))
        nll = batch.feature("chosen_nll")
        return LossOut(-F.logsigmoid(logits) + batch.feature("nll_weight") * nll, rewards, {"chosen_nll": nll.mean()})

    CAPTURED.clear()
    yield
    SUPPLIERS.pop("test_chosen_again")
    OBJECTIVES.pop("test_dpo_plus_nll")


def test_a_new_feature_and_objective_train_end_to_end(fake_feature, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [f"model={tiny_model_dir}", f"data.train={FIXTURES / 'hh_harmless_64.jsonl'}",
                             f"output_dir={out}", "objective=test_dpo_plus_nll", "max_steps=8", "batch_size=4",
                             "learning_rate=3e-3", "max_length=96", "max_prompt_length=64", "logging_steps=1",
                             "data.eval_fraction=0.125", "progress=false", "warmup_ratio=0"])
    summary = train(cfg)
    assert summary["steps"] == 8
    train_calls = [c for c in CAPTURED if c["chosen_nll"].requires_grad]
    assert len(train_calls) == 8
    for c in CAPTURED:
        # the extra row is the chosen row again: its NLL is -(chosen log-prob) / (chosen token count)
        torch.testing.assert_close(c["chosen_nll"], -c["policy"][:, 0] / c["n"][:, 0], atol=1e-5, rtol=1e-5)
        assert c["nll_weight"].tolist() == [0.5] * c["chosen_nll"].shape[0]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    nll = [r["chosen_nll"] for r in rows if "loss" in r]
    assert len(nll) == 8 and sum(nll[-3:]) / 3 < sum(nll[:3]) / 3  # the objective's gradient reached the policy
