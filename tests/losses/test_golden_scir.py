"""SCIR's self-rewarding objective (DPO + the consistency term) against values and gradients worked out
by hand with plain `math` (oracle.py), including a hard judge label and the consistency weight at 0."""

from __future__ import annotations

import math

from prefalign.losses import get_objective
from prefalign.types import SeqLogps

from .oracle import close, ls, sig, t


def test_golden_scir():
    """beta 0.5, consistency 2.
    Pair 1: h = (-4 + 5, -6 + 5) = (1, -1), m = 0.5 * 2 = 1, judge p = 0.7, q = sigmoid(1):
      loss = -log q + 2 (0.7 log(0.7 / q) + 0.3 log(0.3 / (1 - q))); d loss / d m = -(1 - q) + 2 (q - 0.7).
    Pair 2: h = (-1, 1), m = -1, a hard judge label p = 1: the KL is -log q, so loss = 3 * -log sigmoid(-1)
      and d loss / d m = -3 (1 - sigmoid(-1)).
    d m / d policy = (beta, -beta); d m / d reference = (-beta, beta)."""
    policy = t([[-4.0, -6.0], [-7.0, -5.0]], grad=True)
    reference = t([[-5.0, -5.0], [-6.0, -6.0]], grad=True)
    batch = SeqLogps(policy=policy, reference=reference, features={"soft_label": t([0.7, 1.0])})
    out = get_objective("scir")(batch, beta=0.5, consistency=2.0)
    q1, q2 = sig(1.0), sig(-1.0)
    kl1 = 0.7 * math.log(0.7 / q1) + 0.3 * math.log(0.3 / (1 - q1))
    close(out.per_example, [-ls(1.0) + 2 * kl1, -3 * ls(-1.0)])
    close(out.extras["consistency_kl"], (kl1 - ls(-1.0)) / 2)
    close(out.extras["implicit_agrees"], 0.5)  # pair 2's implicit reward prefers the rejected response
    close(out.rewards, [[0.5, -0.5], [-0.5, 0.5]])
    out.per_example.sum().backward()
    g1, g2 = -(1 - q1) + 2 * (q1 - 0.7), -3 * (1 - q2)
    close(policy.grad, [[0.5 * g1, -0.5 * g1], [0.5 * g2, -0.5 * g2]])
    close(reference.grad, [[-0.5 * g1, 0.5 * g1], [-0.5 * g2, 0.5 * g2]])


def test_scir_with_consistency_zero_is_dpo_and_its_term_stops_the_push_at_the_judges_confidence():
    policy, reference = t([[-4.0, -6.0]]), t([[-5.0, -5.0]])
    batch = SeqLogps(policy=policy, reference=reference, features={"soft_label": t([0.7])})
    close(get_objective("scir")(batch, beta=0.5, consistency=0.0).per_example,
          get_objective("dpo")(batch, beta=0.5).per_example)
    assert get_objective("scir").params == {"beta": 0.1, "consistency": 1.0}
    # the gradient in m vanishes where -(1 - q) + c (q - p) = 0: q = (1 + c p) / (1 + c), between the
    # judge's p and DPO's 1
    c, p = 3.0, 0.7
    q = (1 + c * p) / (1 + c)
    m = t([math.log(q / (1 - q))], grad=True)
    pair = SeqLogps(policy=m.unsqueeze(1) * t([[1.0, 0.0]]), reference=t([[0.0, 0.0]]),
                    features={"soft_label": t([p])})
    get_objective("scir")(pair, beta=1.0, consistency=c).per_example.sum().backward()
    close(m.grad, [0.0], tol=1e-12)
