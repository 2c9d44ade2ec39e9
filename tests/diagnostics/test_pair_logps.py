"""Batched pair log-probs equal a one-sequence-at-a-time forward with log_softmax by hand."""

from __future__ import annotations

import torch

from conftest import FIXTURES
from prefalign.data.formats.readers import load_examples
from prefalign.data.tokenize import tokenize_examples
from prefalign.diagnostics.diagnose import margin_preferences, pair_logps
from prefalign.models.causal_lm import load_model


def test_batched_pair_logps_match_single_unpadded_forwards(tiny_model_dir, tokenizer):
    examples, _ = load_examples(FIXTURES / "hh_harmless_64.jsonl")
    examples = examples[:5]
    model = load_model(str(tiny_model_dir))
    got = pair_logps(model, tokenizer, examples, max_length=80, max_prompt_length=40, batch_size=3, progress=False)
    tokenized = tokenize_examples(examples, tokenizer, 80, 40)
    for i, e in enumerate(tokenized):
        for k, (sums, counts) in enumerate(((got.chosen, got.chosen_tokens), (got.rejected, got.rejected_tokens))):
            ids, start = torch.tensor([e.sequences[k]]), e.response_starts[k]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            # token t is predicted by position t - 1; the response is tokens start .. end
            want = sum(float(logp[t - 1, ids[0, t]]) for t in range(max(start, 1), ids.shape[1]))
            assert abs(float(sums[i]) - want) < 1e-3 * max(1.0, abs(want))
            assert int(counts[i]) == ids.shape[1] - max(start, 1)


def test_margin_preferences_follow_the_implicit_reward():
    from prefalign.diagnostics.diagnose import PairLogps

    t = torch.tensor
    pol = PairLogps(t([-1.0, -5.0, -2.0]), t([-2.0, -1.0, -2.0]), t([1, 1, 1]), t([1, 1, 1]))
    ref = PairLogps(t([-3.0, -1.0, -2.0]), t([-1.0, -1.0, -2.0]), t([1, 1, 1]), t([1, 1, 1]))
    # margins (pol_w - ref_w) - (pol_l - ref_l): (2) - (-1) = 3 > 0; (-4) - 0 < 0; 0 - 0 = tie
    assert margin_preferences(pol, ref) == [1.0, 0.0, 0.5]
