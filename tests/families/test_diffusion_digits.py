"""The diffusion-digits reproduction in its quick setting: it pre-trains, pairs by the rule,
aligns through `prefalign train` (family: diffusion) and writes its report, grid and verdict."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")


def test_quick_claim_runs_end_to_end(tmp_path):
    from prefalign.families.diffusion import read_pairs
    from prefalign.reproduce.claims import Verdict, run_claim
    from prefalign.reproduce.diffusion_digits import DIGIT, QUICK, classifier

    result = run_claim("diffusion-digits", tmp_path, quick=True)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["verdict"] in {v.value for v in Verdict} and result.verdict.value == record["verdict"]
    names = [row["objective"] for row in record["table"]]
    assert names == ["reference", f"diffusion_dpo beta={QUICK.betas[0]:g}", f"diffusion_dpo beta={QUICK.betas[1]:g}",
                     "mapo", "deformpam_dpo", "seppo (2 rounds, reconstruction)"]
    assert all(0 <= row["share"] <= 1 and row["winner_mse"] > 0 for row in record["table"])
    assert (tmp_path / "diffusion_digits.png").stat().st_size > 1000
    for name in names[1:-1]:  # every objective trained through the family recipe and left a run folder
        run = tmp_path / "runs" / name.replace(" ", "_").replace("=", "")
        assert json.loads((run / "summary.json").read_text())["family"] == "diffusion"
    assert json.loads((tmp_path / "runs" / "seppo_round2" / "summary.json").read_text())["objective"] == "seppo"
    # the pairs follow the rule: the chosen image is at least as likely a DIGIT as the rejected one
    pairs = read_pairs(tmp_path / "pairs.safetensors")
    probs = classifier()
    import torch

    images = torch.stack([p.images for p in pairs])
    assert (probs(images[:, 0])[:, DIGIT] >= probs(images[:, 1])[:, DIGIT]).all()
