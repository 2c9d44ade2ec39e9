"""prefalign.losses.trl_names: every TRL DPO loss_type maps to a registered objective, and
from_trl_loss's objective and parameters reproduce TRL's documented formula for it."""

from __future__ import annotations

import math

import pytest

from prefalign.losses import OBJECTIVES
from prefalign.losses.trl_names import (TRL_DEFAULTS, TRL_LABEL_SMOOTHING, TRL_LOSS_ARGS, TRL_LOSS_TYPES,
                                        from_trl_loss)

from .oracle import close, ls, sig
from .test_trl_family import random_pairs, run

# TRL's DPOConfig.loss_type values (its documentation, mid-2026), and the pre-2026 "aot_pair"
TRL_DPO_LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                      "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm", "aot_pair"]


def test_every_trl_loss_type_maps_to_a_registered_objective():
    assert sorted(TRL_LOSS_TYPES) == sorted(TRL_DPO_LOSS_TYPES)
    for loss_type, name in TRL_LOSS_TYPES.items():
        assert name in OBJECTIVES, f"TRL {loss_type!r} maps to {name!r}, which is not registered"
    for table in (TRL_LOSS_ARGS, TRL_LABEL_SMOOTHING):
        for loss_type, args in table.items():
            obj = OBJECTIVES[TRL_LOSS_TYPES[loss_type]]
            keys = args if isinstance(args, dict) else [args]
            assert set(keys) <= set(obj.params), (loss_type, keys)
    assert TRL_DEFAULTS == {"beta": 0.1, "label_smoothing": 0.0, "discopop_tau": 0.05}


def trl_formula(loss_type: str, cw, cr, rw, rr, nw, nr, beta, eps, tau) -> list[float]:
    """TRL's per-sequence loss for each loss_type, from its documented behaviour: pairs of summed
    log-probs (chosen, rejected) under policy and reference, completion lengths nw, nr."""
    hw = [a - b for a, b in zip(cw, rw)]
    hl = [a - b for a, b in zip(cr, rr)]
    d = [a - b for a, b in zip(hw, hl)]
    if loss_type == "sigmoid":  # cDPO form (TRL before 2026; label_smoothing 0 in the check below)
        return [-(1 - eps) * ls(beta * x) - eps * ls(-beta * x) for x in d]
    if loss_type == "hinge":
        return [max(0.0, 1 - beta * x) for x in d]
    if loss_type == "ipo":
        return [(w / a - lo / b - 1 / (2 * beta)) ** 2 for w, lo, a, b in zip(hw, hl, nw, nr)]
    if loss_type == "exo_pair":
        return [sig(beta * x) * (ls(beta * x) - math.log(1 - eps)) + sig(-beta * x) * (ls(-beta * x) - math.log(eps))
                for x in d]
    if loss_type == "nca_pair":
        return [-ls(beta * w) - 0.5 * ls(-beta * w) - 0.5 * ls(-beta * lo) for w, lo in zip(hw, hl)]
    if loss_type == "robust":
        return [(-(1 - eps) * ls(beta * x) + eps * ls(-beta * x)) / (1 - 2 * eps) for x in d]
    if loss_type == "bco_pair":
        return [-ls(beta * w) - ls(-beta * lo) for w, lo in zip(hw, hl)]
    if loss_type == "sppo_hard":
        return [(w - 0.5 / beta) ** 2 + (lo + 0.5 / beta) ** 2 for w, lo in zip(hw, hl)]
    if loss_type == "aot":
        u = sorted(a - b for a, b in zip(cw, cr))
        v = sorted(a - b for a, b in zip(rw, rr))
        return [-(1 - eps) * ls(beta * (a - b)) - eps * ls(-beta * (a - b)) for a, b in zip(u, v)]
    if loss_type in ("aot_unpaired", "aot_pair"):
        return [-(1 - eps) * ls(beta * (a - b)) - eps * ls(-beta * (a - b)) for a, b in zip(sorted(hw), sorted(hl))]
    if loss_type == "apo_zero":
        return [1 - sig(beta * w) + sig(beta * lo) for w, lo in zip(hw, hl)]
    if loss_type == "apo_down":
        return [sig(beta * w) + 1 - sig(beta * x) for w, x in zip(hw, d)]
    if loss_type == "discopop":
        return [(1 - sig(beta * x / tau)) * -ls(beta * x) + sig(beta * x / tau) * math.exp(-beta * x) for x in d]
    if loss_type == "sigmoid_norm":
        return [-ls(beta * (w / a - lo / b)) for w, lo, a, b in zip(hw, hl, nw, nr)]
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", [t for t in TRL_DPO_LOSS_TYPES if t != "sft"])
def test_from_trl_loss_computes_trls_loss(loss_type):
    """The objective and parameters from_trl_loss gives reproduce TRL's formula (written above from
    TRL's documentation) on random pairs with lengths, at non-default beta / label_smoothing / tau."""
    batch = random_pairs(seed=8)
    beta, tau = 0.25, 0.3
    eps = 0.0 if loss_type == "sigmoid" else 0.05
    name, params = from_trl_loss(loss_type, beta=beta, label_smoothing=eps, discopop_tau=tau)
    cols = [batch.policy[:, 0], batch.policy[:, 1], batch.reference[:, 0], batch.reference[:, 1],
            batch.n_tokens[:, 0], batch.n_tokens[:, 1]]
    expected = trl_formula(loss_type, *[c.tolist() for c in cols], beta, eps, tau)
    close(run(name, batch, **params).per_example, expected)


def test_from_trl_loss_details():
    """sigmoid's label_smoothing becomes cDPO; sppo_hard's beta becomes eta = 1/beta; sft takes no
    beta; unmapped parameters never fall back to the objective's paper defaults (nca_pair's 0.01)."""
    assert from_trl_loss("sigmoid", label_smoothing=0.1) == ("dpo", {"beta": 0.1, "label_smoothing": 0.1})
    assert from_trl_loss("sppo_hard", beta=0.001) == ("sppo_hard", {"eta": 1000.0})
    assert from_trl_loss("sft") == ("sft", {})
    assert from_trl_loss("nca_pair") == ("nca_pair", {"beta": 0.1})
    assert from_trl_loss("aot_pair", beta=0.2)[0] == "aot_unpaired"
    with pytest.raises(ValueError, match="label_smoothing > 0"):
        from_trl_loss("exo_pair")
    with pytest.raises(ValueError, match="no prefalign objective"):
        from_trl_loss("kto_pair")
