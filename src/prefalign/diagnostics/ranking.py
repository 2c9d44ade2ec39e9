"""Ranking accuracy against its ideal: does the policy rank preferred responses higher?

Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings", arXiv:2405.19534.
All inputs are [N] summed response log-probs of chosen (w) and rejected (l) responses.

Ranking accuracy: share of pairs with logp_pi(w) > logp_pi(l) (ties count half).

Idealized ranking accuracy: the optimum of the DPO/RLHF objective with KL strength beta is
pi*(y) ∝ pi_ref(y) exp(r*(y) / beta); under Bradley-Terry, r*(w) - r*(l) = logit(p), p the true
probability that w is preferred. So pi* ranks a pair correctly iff
    logp_ref(w) - logp_ref(l) + logit(p) / beta > 0.
With hard labels (p = 1) every pair is ideally correct; p must come from soft labels (annotator
agreement, a judge's probability) or be a stated assumption, never a silent default.

Difficulty: with c = logp_ref(l) - logp_ref(w) (how far the reference misranks the pair) and
z = beta * (h_w - h_l), logp_pi(w) - logp_pi(l) = z / beta - c, so the pair is ranked correctly
iff z > beta * c, i.e. iff its DPO loss -log sigmoid(z) is below -log sigmoid(beta * c). The
reference's misranking c therefore sets how low DPO must push a pair's loss to flip it; the
pairs with the largest c are the hardest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def share_correct(w: torch.Tensor, l: torch.Tensor) -> float:
    return float(((w > l).double() + 0.5 * (w == l).double()).mean())


def ranking_report(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
                   beta: float, p: float | torch.Tensor, lengths_w: torch.Tensor | None = None,
                   lengths_l: torch.Tensor | None = None, hardest: int = 10) -> dict:
    """Ranking accuracy (raw, length-normalised), the reference's, the idealized one, the
    alignment gap (idealized - policy), and the `hardest` pairs by reference misranking."""
    p = torch.as_tensor(p, dtype=torch.float64).expand(policy_w.shape)
    if (p <= 0).any() or (p > 1).any():
        raise ValueError("p (the true preference probability of the chosen response) must lie in (0, 1]")
    policy_w, policy_l, ref_w, ref_l = (t.double() for t in (policy_w, policy_l, ref_w, ref_l))
    ideal_margin = ref_w - ref_l + torch.logit(p) / beta  # logit(1) = inf: ideally always correct
    misranking = ref_l - ref_w
    report = {
        "pairs": int(policy_w.numel()),
        "ranking_accuracy": share_correct(policy_w, policy_l),
        "reference_ranking_accuracy": share_correct(ref_w, ref_l),
        "idealized_ranking_accuracy": share_correct(ideal_margin, torch.zeros_like(ideal_margin)),
        "loss_to_flip": [float(-F.logsigmoid(beta * c)) for c in misranking],
    }
    report["alignment_gap"] = report["idealized_ranking_accuracy"] - report["ranking_accuracy"]
    if lengths_w is not None and lengths_l is not None:
        report["ranking_accuracy_len_norm"] = share_correct(policy_w / lengths_w.double().clamp(min=1),
                                                            policy_l / lengths_l.double().clamp(min=1))
    order = torch.argsort(misranking, descending=True, stable=True)[:hardest]
    report["hardest"] = [{"index": int(i), "reference_misranking": float(misranking[i]),
                          "loss_to_flip": report["loss_to_flip"][int(i)],
                          "policy_correct": bool(policy_w[i] > policy_l[i])} for i in order]
    return report
