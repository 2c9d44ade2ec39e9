"""TRL's DPO `loss_type` names -> the prefalign objective that computes the same loss.

Only the names whose objectives exist here yet; the others TRL defines (exo_pair, nca_pair, bco_pair,
aot, aot_unpaired, apo_zero, apo_down, discopop) join as their objectives are registered.
"""

from __future__ import annotations

TRL_LOSS_TYPES = {
    "sigmoid": "dpo",  # label_smoothing is cDPO's, dpo's own label_smoothing
    "hinge": "hinge",  # relu(1 - beta h): RSO's hinge-norm
    "ipo": "ipo",  # TRL averages log-probs per token for ipo: length_normalize=True
    "robust": "robust_dpo",  # label_smoothing is rDPO's epsilon
    "sppo_hard": "sppo_hard",  # TRL's targets are +-1/(2 beta): eta = 1/beta
}
