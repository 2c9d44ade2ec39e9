"""TRL's DPOTrainer `loss_type` names and the prefalign objectives that compute the same losses.

TRL's DPOConfig takes `loss_type` (one name or a list) with `beta`, `label_smoothing` and
`discopop_tau`; `from_trl_loss` turns one such name and those values into a prefalign objective
and its parameters. Where TRL's computation differs from the objective's own default, the
parameters that reproduce TRL are in TRL_LOSS_ARGS (IPO and "sigmoid_norm" length-normalise,
TRL's bco_pair has no reward shift since 2026). The names are those of TRL's documentation
(DPOConfig.loss_type) as of mid-2026, plus the older spelling "aot_pair".
"""

from __future__ import annotations

# TRL loss_type -> registered prefalign objective
TRL_LOSS_TYPES: dict[str, str] = {
    "sigmoid": "dpo",
    "hinge": "hinge",
    "ipo": "ipo",
    "exo_pair": "exo_pair",
    "nca_pair": "nca_pair",
    "robust": "robust_dpo",
    "bco_pair": "bco_pair",
    "sppo_hard": "sppo_hard",
    "aot": "aot",
    "aot_unpaired": "aot_unpaired",
    "aot_pair": "aot_unpaired",  # TRL's name for aot_unpaired until February 2026
    "apo_zero": "apo_zero",
    "apo_down": "apo_down",
    "discopop": "discopop",
    "sft": "sft",
    "sigmoid_norm": "dpo",
}

# Objective parameters, besides beta, that make the objective compute TRL's loss.
TRL_LOSS_ARGS: dict[str, dict] = {
    # TRL divides IPO's log-ratios by the response token counts (per-token means)
    "ipo": {"length_normalize": True},
    "sigmoid_norm": {"length_normalize": True},
    # TRL's 2026 DPO refactor dropped BCO's running-mean reward shift: delta = 0
    "bco_pair": {"reward_shift": 0.0},
}

# Which objective parameter receives TRL's `label_smoothing`, per loss_type that uses it. TRL's
# "sigmoid" applied it as cDPO until its 2026 refactor, which ignores it there; a migrated config
# that sets it meant cDPO, so it goes to dpo's label_smoothing.
TRL_LABEL_SMOOTHING: dict[str, str] = {
    "sigmoid": "label_smoothing",
    "robust": "epsilon",
    "exo_pair": "epsilon",
    "aot": "label_smoothing",
    "aot_unpaired": "label_smoothing",
    "aot_pair": "label_smoothing",
}

# TRL DPOConfig defaults for the values from_trl_loss reads
TRL_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "discopop_tau": 0.05}


def from_trl_loss(loss_type: str, *, beta: float = TRL_DEFAULTS["beta"],
                  label_smoothing: float = TRL_DEFAULTS["label_smoothing"],
                  discopop_tau: float = TRL_DEFAULTS["discopop_tau"]) -> tuple[str, dict]:
    """(objective name, its parameters) computing TRL's `loss_type` with these DPOConfig values.

    The parameters are complete (beta always set), so the objective's own defaults, which follow
    the papers and may differ from TRL's (nca_pair's beta 0.01), never leak in. sppo_hard has no
    beta: TRL's beta is its 1/eta. "sft" maps to prefalign's sft, which averages each example's
    token NLL and then the examples; TRL's averages all chosen tokens of the batch at once, so long
    responses weigh more there.
    """
    if loss_type not in TRL_LOSS_TYPES:
        raise ValueError(f"TRL loss_type {loss_type!r} has no prefalign objective; known: {', '.join(TRL_LOSS_TYPES)}")
    name = TRL_LOSS_TYPES[loss_type]
    if loss_type == "exo_pair" and label_smoothing <= 0:
        raise ValueError("TRL loss_type 'exo_pair' needs label_smoothing > 0 (its epsilon; the EXO paper "
                         "recommends 1e-3), as TRL itself requires")
    params: dict = dict(TRL_LOSS_ARGS.get(loss_type, {}))
    if name == "sppo_hard":
        params["eta"] = 1.0 / beta
    elif name != "sft":
        params["beta"] = beta
    if loss_type in TRL_LABEL_SMOOTHING:
        params[TRL_LABEL_SMOOTHING[loss_type]] = label_smoothing
    if name == "discopop":
        params["tau"] = discopop_tau
    return name, params
