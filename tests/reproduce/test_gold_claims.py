"""The three gold-testbed reproductions end to end in their quick setting: real sampling, VADER
labels, training and evaluation on the shipped tiny model, one report per claim. The verdict of
the quick setting is not the claim's (too few steps to tell); what is checked is that every
number in the report is the one its definition gives."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from prefalign.reproduce import dpo_frontier, gold_testbed, likelihood_overopt, overoptimisation  # noqa: F401 (registers)
from prefalign.reproduce.claims import Verdict, run_claim
from prefalign.reproduce.dpo_frontier import QUICK

pytest.importorskip("vaderSentiment")


@pytest.fixture(scope="module")
def quick_data(tmp_path_factory):
    """The quick setting's data, built once and copied into each claim's folder (all three use the same sizes)."""
    folder = tmp_path_factory.mktemp("gold") / "data"
    report = gold_testbed.build_gold_data(folder, QUICK["train_prompts"], QUICK["eval_prompts"],
                                          max_new_tokens=QUICK["max_new_tokens"])
    return folder, report


def claim_dir(tmp_path, quick_data):
    shutil.copytree(quick_data[0], tmp_path / "data")
    return tmp_path


def test_quick_data_is_labelled_by_vader(quick_data):
    folder, report = quick_data
    from prefalign.judges import make_judge

    judge = make_judge("vader_sentiment")
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert len(rows) == report["train"]["pairs"] > 0
    for r in rows[:10]:  # the stored scores are VADER's, and the chosen one is the higher
        assert judge.score([r["prompt"]] * 2, [r["chosen"], r["rejected"]]) == [r["score_chosen"], r["score_rejected"]]
        assert r["score_chosen"] >= r["score_rejected"] + 0.05
    with pytest.raises(ValueError, match="other settings"):
        gold_testbed.build_gold_data(folder, 99, 8)


@pytest.mark.slow
def test_likelihood_overopt_quick(tmp_path, quick_data):
    result = run_claim("likelihood-overopt", claim_dir(tmp_path, quick_data), quick=True)
    assert isinstance(result.verdict, Verdict)
    rows = result.numbers["rows"]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert rows[0]["kl"] == 0.0  # step 0 is the starting model itself
    assert 0 < rows[0]["entropy"] <= 2.303 and 0 < rows[0]["mass"] <= 1  # log(10) bounds the top-10 entropy
    assert result.numbers["stop_step"] in (0, 2, 4)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["verdict"] == result.verdict.value and (tmp_path / "likelihood_overopt.png").stat().st_size > 0


@pytest.mark.slow
def test_overoptimisation_quick(tmp_path, quick_data):
    result = run_claim("overoptimisation", claim_dir(tmp_path, quick_data), quick=True)
    fit = result.numbers["fit"]
    assert len(fit["d"]) == 2  # checkpoints 2 and 4 (step 0 is the origin of the fit)
    runs = result.numbers["runs"][0]
    assert [r["step"] for r in runs] == [0, 2, 4] and runs[0]["kl"] == 0.0
    assert fit["gain"] == pytest.approx([r["gold"] - runs[0]["gold"] for r in runs[1:]], abs=1e-5)
    # the verdict reads the quality-gated gold; plain VADER's fit is reported beside it
    assert math.isfinite(result.numbers["gate"]["nll_per_token_threshold"])
    assert "fit_plain_vader" in result.numbers
    assert "Plain VADER" in result.reason
    # two points cannot show a hump: the quick setting must not claim one
    assert result.verdict is Verdict.INCONCLUSIVE and "too little movement" in result.reason


@pytest.mark.slow
def test_dpo_frontier_quick(tmp_path, quick_data):
    result = run_claim("dpo-frontier", claim_dir(tmp_path, quick_data), quick=True)
    n = result.numbers
    assert [c["name"] for c in n["cells"]] == ["dpo-0.1", "dpo-1.0", "sft-None", "unlikelihood-None-1.0"]
    assert [b["n"] for b in n["best_of_n"]] == [1, 2, 4] and n["best_of_n"][0]["kl"] == 0.0
    # best-of-N can only gain on best-of-1: the max of more samples of the same stream
    assert n["best_of_n"][0]["score"] <= n["best_of_n"][1]["score"] <= n["best_of_n"][2]["score"]
    assert result.verdict in (Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE)
    assert (tmp_path / "frontier.png").stat().st_size > 0 and "dpo-1.0" in (tmp_path / "report.md").read_text()
    # every checkpoint of the compared methods is evaluated; step 0 is the reference itself (KL 0)
    for c in n["cells"]:
        assert [r["step"] for r in c["checkpoints"]] == [0, 1, 2, 3]
        assert c["checkpoints"][0]["kl"] == 0.0 and c["checkpoints"][0]["score"] == pytest.approx(
            n["reference_score"]["mean"])
        assert (c["kl"], c["score"]) == pytest.approx((c["checkpoints"][-1]["kl"], c["checkpoints"][-1]["score"]))
    # the envelope is built from those points: its first point is the reference's, its scores rise
    pts = [(r["kl"], r["score"]) for c in n["cells"] if c["objective"] == "dpo" for r in c["checkpoints"]]
    assert n["frontiers"]["dpo"] == [list(p) for p in dpo_frontier.frontier(pts)]
    assert [p["kl"] for p in n["frontier_gaps"]["sft"]] == [1.0, 2.0, 4.0]
    assert "DPO's frontier >= Unlikelihood's" in result.reason or "precondition" in result.reason
    for p in n["frontier_gaps"]["sft"]:
        assert p["a"] == (None if dpo_frontier.envelope(pts, p["kl"]) is None
                          else pytest.approx(dpo_frontier.envelope(pts, p["kl"])))
    # one evaluation file per distinct model (the reference once, shared by every cell); a rerun samples nothing
    kept = sorted((tmp_path / "evaluations").glob("*.json"))
    assert len(kept) == 1 + 4 * 3
    before = [f.stat().st_mtime_ns for f in kept]
    again = run_claim("dpo-frontier", tmp_path, quick=True)
    assert [f.stat().st_mtime_ns for f in kept] == before and again.numbers["cells"] == n["cells"]
    # a finished cell trained with other settings is never reused in the place of the one asked for
    with pytest.raises(ValueError, match="save_steps: 1 there, 0 asked"):
        gold_testbed.train_run(tmp_path / "runs" / "dpo-0.1", tmp_path / "data", "dpo", QUICK["steps"], 0.1)
