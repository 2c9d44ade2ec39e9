"""ranking-gap: the numbers recompute from the saved per-pair log-probs; the rules decide as written."""

from __future__ import annotations

import json
import math

import torch

from prefalign.reproduce import ranking_gap
from prefalign.reproduce.claims import Verdict, run_claim


def test_quick_run_numbers_recompute_from_the_saved_log_probs(tmp_path):
    result = run_claim("ranking-gap", tmp_path, quick=True)
    record = json.loads((tmp_path / "result.json").read_text())
    saved = json.loads((tmp_path / "pair_logps.json").read_text())
    for split in ("train", "held_out"):
        pol, ref = saved[split]["policy"], saved[split]["reference"]
        got = record["numbers"][split]
        n = len(pol)
        assert got["pairs"] == n == (32 if split == "train" else 16)
        # R: likelihood ranks chosen above rejected (no ties occur in real float log-probs)
        assert abs(got["ranking_accuracy"] - sum(w > lo for w, lo in pol) / n) < 1e-12
        # R* (Cor. 3.3): pi_ref(w)/pi_ref(l) * (alpha/(1-alpha))^(1/beta) > 1, alpha = 0.75 so the odds are 3
        for beta in (0.01, 0.1, 1.0, 5.0, 10.0):
            ideal = sum((rw - rl) + math.log(3) / beta > 0 for rw, rl in ref) / n
            assert abs(got["idealized_by_beta"][str(beta)] - ideal) < 1e-12
        wrong = [i for i, (rw, rl) in enumerate(ref) if rw < rl]
        assert got["reference_misranked"] == len(wrong)
        if wrong:
            assert abs(got["flipped_share"] - sum(pol[i][0] > pol[i][1] for i in wrong) / len(wrong)) < 1e-12
        losses = [math.log1p(math.exp(-0.1 * ((p[0] - r[0]) - (p[1] - r[1])))) for p, r in zip(pol, ref)]
        assert abs(got["dpo_loss"] - sum(losses) / n) < 1e-9
    v, _ = ranking_gap.verdict(record["numbers"]["train"], record["numbers"]["held_out"])
    assert result.verdict is v and (tmp_path / "ranking_gap.png").stat().st_size > 0


def numbers(**kw):
    base = {"dpo_loss": 0.4, "ranking_accuracy": 0.45, "idealized_median": 0.9, "flipped_share": 0.05,
            "reference_misranked": 50, "theorem_4_1_pairs": 100, "theorem_4_1_disagreements": 0}
    return {**base, **kw}


def test_rules():
    held = numbers()
    assert ranking_gap.verdict(numbers(), held)[0] is Verdict.PASS
    # an untrained policy would show the gap trivially: inconclusive, never a pass
    v, why = ranking_gap.verdict(numbers(dpo_loss=math.log(2) - 0.05), held)
    assert v is Verdict.INCONCLUSIVE and "did not fit" in why
    v, why = ranking_gap.verdict(numbers(idealized_median=0.55), held)
    assert v is Verdict.FAIL and "median R* - R = 0.100" in why
    assert ranking_gap.verdict(numbers(), numbers(ranking_accuracy=0.61))[0] is Verdict.FAIL
    assert ranking_gap.verdict(numbers(flipped_share=0.25), held)[0] is Verdict.FAIL
    assert ranking_gap.verdict(numbers(theorem_4_1_disagreements=1), held)[0] is Verdict.FAIL


def test_theorem_4_1_holds_on_every_pair():
    # ranked correctly iff the DPO loss is below -log sigmoid(beta c), c = log pi_ref(l) - log pi_ref(w)
    g = torch.Generator().manual_seed(0)
    ref = -torch.rand(500, 2, generator=g, dtype=torch.float64) * 300
    pol = ref + torch.randn(500, 2, generator=g, dtype=torch.float64) * 20
    got = ranking_gap.measure(pol, ref, torch.full((500, 2), 50.0, dtype=torch.float64))
    assert got["theorem_4_1_pairs"] == 500 and got["theorem_4_1_disagreements"] == 0
    assert 0 < got["ranking_accuracy"] < 1 and got["idealized_max"] >= got["idealized_min"]
