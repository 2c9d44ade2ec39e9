"""Calibration of pairwise probabilities: reliability bins, expected calibration error, temperature scaling.

A prediction is P(a preferred over b) = p with outcome y = 1 if a was preferred. Calibration is
measured on the predicted winner (top-label): confidence max(p, 1 - p), correct when the
predicted winner won. ECE = sum_bins (n_bin / n) |accuracy_bin - confidence_bin| over
equal-width confidence bins on [0.5, 1] (Guo et al. 2017, arXiv:1706.04599).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float  # mean confidence in the bin (nan when empty)
    accuracy: float  # fraction correct in the bin (nan when empty)


def reliability_bins(probs, outcomes, n_bins: int = 10) -> list[ReliabilityBin]:
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(outcomes, dtype=torch.float64)
    if p.shape != y.shape or p.dim() != 1:
        raise ValueError(f"probs and outcomes must be 1-D and aligned, got {tuple(p.shape)} and {tuple(y.shape)}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    confidence = torch.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (y >= 0.5)).double()
    edges = torch.linspace(0.5, 1.0, n_bins + 1, dtype=torch.float64)
    # bin i holds (edge_i, edge_i+1]; the first bin also holds exactly 0.5
    which = torch.clamp(torch.bucketize(confidence, edges, right=False) - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        sel = which == i
        n = int(sel.sum())
        bins.append(ReliabilityBin(float(edges[i]), float(edges[i + 1]), n,
                                   float(confidence[sel].mean()) if n else float("nan"),
                                   float(correct[sel].mean()) if n else float("nan")))
    return bins


def expected_calibration_error(probs, outcomes, n_bins: int = 10) -> float:
    bins = reliability_bins(probs, outcomes, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        raise ValueError("no predictions to calibrate")
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count)


def fit_temperature(logits, outcomes, steps: int = 200) -> float:
    """The T > 0 minimising the NLL of sigmoid(logit / T) against the outcomes (fit on a validation split)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(outcomes, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())
