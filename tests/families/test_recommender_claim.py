"""recsys-onerec: the quick setting runs end to end (pretraining, IPA rounds through FamilyTrainee and the
loop, the next-item baseline) with a PASS, and the rule's verdicts follow from the numbers it reads."""

from __future__ import annotations

import json

import torch

from prefalign.reproduce.claims import Verdict, run_claim
from prefalign.reproduce.recsys_onerec import verdict


def test_quick_reproduction_raises_true_utility_over_next_item_training_and_keeps_recall(tmp_path):
    result = run_claim("recsys-onerec", tmp_path, quick=True)
    assert result.verdict == Verdict.PASS, result.reason
    record = json.loads((tmp_path / "result.json").read_text())
    ipa, baseline = record["numbers"]["rounds"]["ipa"], record["numbers"]["rounds"]["next_item"]
    assert len(ipa) == record["numbers"]["setting"]["rounds"] + 1
    assert [r["utility"] for r in ipa] == sorted(r["utility"] for r in ipa)  # rises round over round
    assert ipa[-1]["utility"] > baseline[-1]["utility"]
    assert ipa[-1]["reward"] > ipa[0]["reward"]  # what was optimised moved too
    assert all(c["examples"] > 0 for c in record["numbers"]["pairs"])
    assert (tmp_path / "recsys_onerec.png").stat().st_size > 0 and (tmp_path / "report.md").exists()


def arms(utility_ipa: list, utility_next: list, hits_start: float, hits_end: float, n: int = 100) -> dict:
    """Per-user tensors at the given means; the arms' spreads run opposite ways, so the paired
    difference has a standard error of about 0.012."""
    spread = torch.linspace(-0.1, 0.1, n)
    hits = lambda p: (torch.arange(n) < round(p * n)).float()  # noqa: E731
    ipa = [{"utility": u + spread, "hits": hits(hits_start)} for u in utility_ipa]
    ipa[-1]["hits"] = hits(hits_end)
    baseline = [{"utility": u - spread, "hits": hits(hits_start)} for u in utility_next]
    return {"rounds": {"ipa": ipa, "next_item": baseline}, "rm_spearman": 0.8,
            "recall_of": {"popularity": 0.1, "true_utility": 0.5}, "best_session_utility": 3.0}


def test_the_rule_fails_when_utility_stalls_or_recall_drops_and_cannot_tell_with_a_bad_simulator():
    assert verdict(arms([1.0, 1.3, 1.6], [1.0, 1.0, 1.0], 0.3, 0.3))[0] == Verdict.PASS
    assert verdict(arms([1.0, 1.3, 1.2], [1.0, 1.0, 1.0], 0.3, 0.3))[0] == Verdict.FAIL  # falls in round 2
    assert verdict(arms([1.0, 1.01, 1.02], [1.0, 1.0, 1.01], 0.3, 0.3))[0] == Verdict.FAIL  # within noise of baseline
    assert verdict(arms([1.0, 1.3, 1.6], [1.0, 1.0, 1.0], 0.3, 0.1))[0] == Verdict.FAIL  # recall@10 dropped
    bad = arms([1.0, 1.3, 1.6], [1.0, 1.0, 1.0], 0.3, 0.3)
    bad["rm_spearman"] = 0.1
    assert verdict(bad)[0] == Verdict.INCONCLUSIVE
    untrained = arms([1.0, 1.3, 1.6], [1.0, 1.0, 1.0], 0.08, 0.08)  # popularity alone ranks better (0.1)
    assert verdict(untrained)[0] == Verdict.INCONCLUSIVE
