"""Reward over-optimisation: the Gao et al. fit R(d) = d (a - b log d) (arXiv:2210.10760) and its probe."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from prefalign.diagnostics.reward_overopt import (fit_gao, gao_curve, gao_peak, plot_reward_vs_kl, reward_vs_kl,
                                                  summarise)
from prefalign.judges import CallableJudge


def test_fit_recovers_known_parameters_from_exact_points():
    d = torch.tensor([0.0, 0.3, 0.7, 1.5, 2.5, 4.0, 6.0], dtype=torch.float64)  # d = 0 is ignored, not a crash
    r = gao_curve(d, 1.2, 0.4)
    fit = fit_gao(d, r)
    assert (fit["a"], fit["b"]) == pytest.approx((1.2, 0.4), abs=1e-10)
    assert fit["points"] == 6 and fit["rmse"] < 1e-10


def test_fit_is_least_squares_on_r_itself():
    """With noise, the closed form equals a generic least-squares solve of R on the columns (d, -d log d)."""
    g = torch.Generator().manual_seed(0)
    d = torch.linspace(0.2, 5.0, 12, dtype=torch.float64)
    r = gao_curve(d, 0.8, 0.3) + 0.05 * torch.randn(12, generator=g, dtype=torch.float64)
    fit = fit_gao(d, r)
    design = torch.stack([d, -d * d.log()], 1)
    a, b = torch.linalg.lstsq(design, r[:, None]).solution.squeeze(1).tolist()
    assert (fit["a"], fit["b"]) == pytest.approx((a, b), abs=1e-9)
    assert (fit["a"], fit["b"]) == pytest.approx((0.8, 0.3), abs=0.1)


def test_peak_by_hand():
    """a = 1, b = 1/2: d* = exp(1 / (1/2) - 1) = e, KL* = e^2, R(d*) = b d* = e / 2 (and R'(d*) = 0)."""
    peak = gao_peak(1.0, 0.5)
    assert peak["d"] == pytest.approx(math.e) and peak["kl"] == pytest.approx(math.e ** 2)
    assert peak["gain"] == pytest.approx(math.e / 2)
    assert float(gao_curve(math.e, 1.0, 0.5)) == pytest.approx(math.e / 2)
    h = 1e-5
    assert float(gao_curve(math.e + h, 1.0, 0.5) - gao_curve(math.e - h, 1.0, 0.5)) / (2 * h) == pytest.approx(0, abs=1e-8)
    assert gao_peak(1.0, 0.0) is None and gao_peak(1.0, -0.2) is None


def rows(points):
    out = [{"step": 0, "d": 0.0, "gain": 0.0, "score": 1.0, "is_reference": True}]
    return out + [{"step": 10 * (i + 1), "d": d, "gain": g, "score": 1.0 + g, "is_reference": False}
                  for i, (d, g) in enumerate(points)]


def test_summarise_reports_why_there_is_no_fit_or_no_peak(tmp_path):
    one = summarise(rows([(0.0, 0.1), (1.0, 0.5)]))  # a checkpoint at d = 0 (KL estimate <= 0) and one more
    assert one["fit"] is None and "two or more distinct d" in one["note"] and one["kl_not_positive"] == 1
    rising = summarise(rows([(d, float(gao_curve(d, 1.0, -0.1))) for d in (0.5, 1.0, 2.0)]))
    assert rising["fit"]["b"] == pytest.approx(-0.1) and rising["peak"] is None and "b <= 0" in rising["note"]
    # a = 1, b = 1/2 peaks at d* = e (see test_peak_by_hand): measured only at d >= 3 it lies below them all
    early = summarise(rows([(d, float(gao_curve(d, 1.0, 0.5))) for d in (3.0, 4.0, 5.0)]))
    assert early["peak"]["d"] == pytest.approx(math.e) and "below the smallest d measured (3)" in early["note"]
    peaked = summarise(rows([(d, float(gao_curve(d, 1.0, 0.5))) for d in (0.5, 1.0, 2.0, 4.0)]))
    assert peaked["peak"]["d"] == pytest.approx(math.e) and peaked["note"] is None
    out = plot_reward_vs_kl(peaked, tmp_path / "r.png")
    assert out.stat().st_size > 5000


def test_a_model_equal_to_its_reference_has_zero_kl_and_zero_gain(tiny_model_dir, tmp_path):
    """A copy of the reference in another folder: identical log-probs (KL exactly 0, so d = 0 and it is left out
    of the fit), identical samples under the same seed (gain exactly 0). The judge scores response length."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    seen = []
    judge = CallableJudge(lambda p, r: seen.append(p) or float(len(r)))
    prompts = ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: Where is Paris?\n\nAssistant:"]
    result = reward_vs_kl([(0, tiny_model_dir), (7, copy)], tiny_model_dir, judge, prompts, max_new_tokens=8,
                          progress=False)
    ref, other = result["rows"]
    assert ref["is_reference"] and ref["kl"] == 0.0 and ref["samples"] == 2
    assert other["step"] == 7 and other["kl"] == 0.0 and other["d"] == 0.0 and other["gain"] == 0.0
    assert result["fit"] is None and result["kl_not_positive"] == 1
    assert seen == prompts * 2  # the judge saw each sample's own prompt
