"""Factor analysis: the IRLS fit against closed forms and an independent optimiser, and a synthetic
length-only preference that the analysis must attribute to length alone."""

from __future__ import annotations

import math
import random

import pytest
import torch

from prefalign.diagnostics.factors import (FACTORS, explain_preferences, factor_matrix, fit_logistic,
                                           length_bias_sentence, plot_factor_weights, prompt_overlap, resolve_factor)


def test_single_sign_feature_matches_the_closed_form():
    """x = +-1, no intercept: the likelihood depends only on the s 'agreements' (x = 1, y = 1 or
    x = -1, y = 0) out of n, so sigmoid(w) = s / n: w = logit(7/10) = ln(7/3) = 0.8473, and the
    Fisher information n p (1 - p) = 10 * 0.21 = 2.1 gives stderr 1/sqrt(2.1) = 0.6901."""
    x = torch.tensor([[1.0]] * 6 + [[-1.0]] * 4, dtype=torch.float64)
    y = torch.tensor([1, 1, 1, 1, 1, 0] + [0, 0, 1, 1], dtype=torch.float64)  # agreements: 5 + 2 = 7
    fit = fit_logistic(x, y)
    assert fit.converged
    assert float(fit.weights[0]) == pytest.approx(math.log(7 / 3), abs=1e-10)
    assert float(fit.stderr[0]) == pytest.approx(1 / math.sqrt(2.1), abs=1e-10)


def test_fit_equals_an_independent_optimiser_with_and_without_prior():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(60, generator=g, dtype=torch.float64) < torch.sigmoid(x @ torch.tensor([1.0, -0.5, 0.0],
                                                                                        dtype=torch.float64))).double()
    for l2 in (0.0, 0.5):
        w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y, reduction="sum") + l2 / 2 * w @ w
            loss.backward()
            return loss

        opt.step(closure)
        assert torch.allclose(fit_logistic(x, y, l2).weights, w.detach(), atol=1e-6)


def synthetic_pairs(n: int, seed: int):
    """Pairs whose other factors vary at random but whose label depends on length only."""
    rng = random.Random(seed)
    words = "apple river stone cloud green music paper light table window".split()

    def response(prompt_words):
        parts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60)))]
        if rng.random() < 0.5:
            parts.append("- one\n- two")
        if rng.random() < 0.5:
            parts.append("perhaps it depends")
        if rng.random() < 0.3:
            parts.append("I'm sorry")
        parts.append(" ".join(rng.sample(prompt_words, rng.randint(0, 3))))
        rng.shuffle(parts)
        return "\n".join(parts)

    prompts, a, b, labels = [], [], [], []
    for _ in range(n):
        pw = rng.sample(["ocean", "forest", "bridge", "planet", "violin", "garden"], 3)
        p, x, y = " ".join(pw) + "?", response(pw), response(pw)
        prompts.append(p), a.append(x), b.append(y)
        diff = FACTORS["length"](p, x) - FACTORS["length"](p, y)
        labels.append(1 if rng.random() < 1 / (1 + math.exp(-2.0 * diff)) else 0)
    return prompts, a, b, labels


def test_length_only_preferences_are_attributed_to_length_alone():
    prompts, a, b, labels = synthetic_pairs(400, seed=1)
    names, phi = factor_matrix(prompts, a, b)
    result = explain_preferences(names, phi, labels)
    rows = {r["factor"]: r for r in result["factors"]}
    assert set(rows) == {"length", "markdown", "hedging", "refusal", "prompt_overlap"}
    assert rows["length"]["ci_low"] > 0.5  # far from zero
    # the true weight on the standardised scale is 2.0 times the feature's scale; the interval covers it
    assert rows["length"]["ci_low"] < 2.0 * rows["length"]["scale"] < rows["length"]["ci_high"]
    for name in ("markdown", "hedging", "refusal", "prompt_overlap"):
        assert rows[name]["ci_low"] < 0 < rows[name]["ci_high"], name
    assert "prefers longer responses" in length_bias_sentence("the data", result)


def test_orientation_does_not_matter_and_ties_constants_are_reported():
    prompts, a, b, labels = synthetic_pairs(80, seed=2)
    names, phi = factor_matrix(prompts, a, b)
    forward = explain_preferences(names, phi, labels)
    flipped = explain_preferences(names, -phi, [1 - v for v in labels])
    for r, s in zip(forward["factors"], flipped["factors"]):
        assert r["weight"] == pytest.approx(s["weight"], abs=1e-9)
    # a tie and a missing verdict are excluded and counted; a factor that never differs is listed
    labels2 = [0.5, None] + labels[2:]
    names2, phi2 = factor_matrix(prompts, a, b, factors=("length", "refusal", lambda p, r: 1.0))
    out = explain_preferences(names2, phi2, labels2)
    assert out["excluded"] == 2 and out["pairs"] == 78 and out["constant"] == ["<lambda>"]


def test_user_factor_by_module_path_and_errors():
    name, fn = resolve_factor("prefalign.diagnostics.factors:prompt_overlap")
    assert name == "prompt_overlap" and fn is prompt_overlap
    assert prompt_overlap("ocean bridge?", "the ocean is wide") == 0.5
    with pytest.raises(ValueError, match="unknown factor 'nope'"):
        resolve_factor("nope")
    with pytest.raises(ValueError, match="factor 'bad'.*pair 0"):
        factor_matrix(["p"], ["a"], ["b"], factors=(bad,))


def bad(prompt, response):
    return float("nan")


def test_plot_writes_a_png(tmp_path):
    prompts, a, b, labels = synthetic_pairs(60, seed=3)
    names, phi = factor_matrix(prompts, a, b)
    res = explain_preferences(names, phi, labels)
    plot_factor_weights({"data": res, "model": res}, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
