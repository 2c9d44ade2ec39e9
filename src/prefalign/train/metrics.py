"""Preference metrics as (sum, count) pairs, so micro-batches and processes combine exactly.

Sums stay tensors on the device until a log step: reading each one back with .item() would make
the host wait for the accelerator several times per micro-batch.
"""

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


def ndcg(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-list NDCG of the order given by `scores` against the order of `target`, and a mask of
    lists where it is defined (not all tied). Relevance of an item is the number of valid items
    with a strictly lower target (the worst is 0), gain 2^rel - 1, discount 1/log2(1 + rank)."""
    rel = ((target[:, :, None] > target[:, None, :]) & valid[:, None, :]).sum(2).float() * valid
    gain = torch.exp2(rel) - 1
    k = scores.shape[1]
    discount = 1 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=torch.float32))
    order = scores.float().masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
    dcg = (gain.gather(1, order) * discount).sum(1)
    idcg = (gain.sort(dim=1, descending=True).values * discount).sum(1)
    defined = idcg > 0
    return torch.where(defined, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg)), defined


def batch_metrics(seq: SeqLogps, out: LossOut) -> dict[str, tuple]:
    m: dict[str, tuple] = {}
    n = float(seq.batch_size)
    m["loss"] = (out.per_example.detach().float().sum(), n)
    for name, value in out.extras.items():
        m[name] = (torch.as_tensor(value).detach().float() * n, n)
    if seq.policy.shape[1] >= 2:
        best, worst = best_and_worst(seq)
        pick = lambda t, i: t.gather(1, i[:, None]).squeeze(1).detach().float()  # noqa: E731
        r_w, r_l = pick(out.rewards, best), pick(out.rewards, worst)
        p_w, p_l = pick(seq.policy, best), pick(seq.policy, worst)
        m["rewards/chosen"] = (r_w.sum(), n)
        m["rewards/rejected"] = (r_l.sum(), n)
        m["rewards/margins"] = ((r_w - r_l).sum(), n)
        m["rewards/accuracy"] = (win_share(r_w, r_l).sum(), n)
        m["logps/chosen"] = (p_w.sum(), n)
        m["logps/rejected"] = (p_l.sum(), n)
        m["ranking/accuracy"] = (win_share(p_w, p_l).sum(), n)
        if seq.n_tokens is not None:
            l_w, l_l = pick(seq.n_tokens, best).clamp(min=1), pick(seq.n_tokens, worst).clamp(min=1)
            m["ranking/accuracy_len_norm"] = (win_share(p_w / l_w, p_l / l_l).sum(), n)
        if seq.policy.shape[1] > 2:
            values, defined = ndcg(out.rewards.detach(), seq.target, seq.valid)
            m["rewards/ndcg"] = ((values * defined).sum(), defined.sum().double())
        if seq.reference is not None:
            # mean log-ratio of the responses in the data: a cheap (off-policy) KL proxy
            h = (seq.policy - seq.reference).detach().float()
            m["kl/logratio_mean"] = ((h * seq.valid).sum(), float(seq.valid.sum()))
    else:
        desirable = seq.target[:, 0] > 0.5
        r = out.rewards[:, 0].detach().float()
        n_good = desirable.sum().double()  # a count that stays on the device too
        m["rewards/desirable"] = ((r * desirable).sum(), n_good)
        m["rewards/undesirable"] = ((r * ~desirable).sum(), n - n_good)
    return m


class MetricAccumulator:
    def __init__(self):
        self.sums: dict[str, list] = defaultdict(lambda: [0.0, 0.0])

    def add(self, metrics: dict[str, tuple]) -> None:
        for k, (s, c) in metrics.items():
            self.sums[k][0] = self.sums[k][0] + s
            self.sums[k][1] = self.sums[k][1] + c

    def reduce(self, accelerator=None) -> dict[str, float]:
        """Means over everything added, summed across processes first when distributed."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        device = accelerator.device if accelerator is not None else "cpu"
        t = torch.stack([torch.stack([torch.as_tensor(self.sums[k][0], dtype=torch.float64, device=device),
                                      torch.as_tensor(self.sums[k][1], dtype=torch.float64, device=device)])
                         for k in keys])
        if accelerator is not None and accelerator.num_processes > 1:
            t = accelerator.reduce(t, reduction="sum")
        return {k: (s / c if c else float("nan")) for k, (s, c) in zip(keys, t.cpu().tolist())}
