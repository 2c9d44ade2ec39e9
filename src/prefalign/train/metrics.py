"""Preference metrics as (sum, count) pairs, so micro-batches and processes combine exactly."""

from __future__ import annotations

from collections import defaultdict

import torch

from prefalign.types import LossOut, SeqLogps


def best_and_worst(seq: SeqLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] column of the highest and of the lowest target among valid entries."""
    target = seq.target.float()
    best = target.masked_fill(~seq.valid, float("-inf")).argmax(1)
    worst = target.masked_fill(~seq.valid, float("inf")).argmin(1)
    return best, worst


def win_share(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where a > b, 0.5 on ties, 0 otherwise: a model equal to its reference scores 0.5, not 0."""
    return (a > b).float() + 0.5 * (a == b).float()


def batch_metrics(seq: SeqLogps, out: LossOut) -> dict[str, tuple[float, float]]:
    m: dict[str, tuple[float, float]] = {}
    n = float(seq.batch_size)
    m["loss"] = (out.per_example.detach().float().sum().item(), n)
    for name, value in out.extras.items():
        m[name] = (float(value) * n, n)
    if seq.policy.shape[1] >= 2:
        best, worst = best_and_worst(seq)
        pick = lambda t, i: t.gather(1, i[:, None]).squeeze(1).detach().float()  # noqa: E731
        r_w, r_l = pick(out.rewards, best), pick(out.rewards, worst)
        p_w, p_l = pick(seq.policy, best), pick(seq.policy, worst)
        m["rewards/chosen"] = (r_w.sum().item(), n)
        m["rewards/rejected"] = (r_l.sum().item(), n)
        m["rewards/margins"] = ((r_w - r_l).sum().item(), n)
        m["rewards/accuracy"] = (win_share(r_w, r_l).sum().item(), n)
        m["logps/chosen"] = (p_w.sum().item(), n)
        m["logps/rejected"] = (p_l.sum().item(), n)
        m["ranking/accuracy"] = (win_share(p_w, p_l).sum().item(), n)
        if seq.n_tokens is not None:
            l_w, l_l = pick(seq.n_tokens, best).clamp(min=1), pick(seq.n_tokens, worst).clamp(min=1)
            m["ranking/accuracy_len_norm"] = (win_share(p_w / l_w, p_l / l_l).sum().item(), n)
        if seq.reference is not None:
            # mean log-ratio of the responses in the data: a cheap (off-policy) KL proxy
            h = (seq.policy - seq.reference).detach().float()[seq.valid]
            m["kl/logratio_mean"] = (h.sum().item(), float(h.numel()))
    else:
        desirable = seq.target[:, 0] > 0.5
        r = out.rewards[:, 0].detach().float()
        m["rewards/desirable"] = (r[desirable].sum().item(), float(desirable.sum()))
        m["rewards/undesirable"] = (r[~desirable].sum().item(), float((~desirable).sum()))
    return m


class MetricAccumulator:
    def __init__(self):
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def add(self, metrics: dict[str, tuple[float, float]]) -> None:
        for k, (s, c) in metrics.items():
            self.sums[k][0] += s
            self.sums[k][1] += c

    def reduce(self, accelerator=None) -> dict[str, float]:
        """Means over everything added, summed across processes first when distributed."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        t = torch.tensor([self.sums[k] for k in keys], dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            t = accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()
        return {k: (s / c if c else float("nan")) for k, (s, c) in zip(keys, t.tolist())}
