"""`beta` through the Python API and the config: unset means the objective's own default; an
objective without a beta refuses one, naming its parameters (and the one that plays beta's role).
Also parameter-switched features (ORPO's prompt-and-response NLL) refused before training."""

from __future__ import annotations

import pytest
import torch

from prefalign.losses import OBJECTIVES, get_objective, pairwise_loss
from prefalign.losses.registry import no_beta_message

from .oracle import close, t

NO_BETA = sorted(name for name, obj in OBJECTIVES.items() if "beta" not in obj.params)
# which parameter plays beta's role, per objective that has one under another name
HINTS = {"sppo": "eta = 1/beta", "sppo_hard": "eta = 1/beta", "orpo": "lam"}


def test_the_objectives_without_beta_are_the_known_ones():
    """A rename or a new beta would silently shrink the parametrised tests below: pin the list."""
    assert NO_BETA == ["orpo", "pro", "sami", "sft", "sppo", "sppo_hard", "unlikelihood"]


@pytest.mark.parametrize("name", NO_BETA)
def test_api_refuses_beta_for_an_objective_without_one(name):
    args = (t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]))
    with pytest.raises(ValueError) as err:
        pairwise_loss(name, *args, beta=0.1, chosen_lengths=t([2.0]), rejected_lengths=t([2.0]))
    message = str(err.value)
    assert f"objective {name!r} has no beta" in message
    for param in get_objective(name).params:
        assert param in message
    if name in HINTS:
        assert HINTS[name] in message
    assert message == no_beta_message(get_objective(name))


def test_config_refuses_beta_with_the_same_message():
    from prefalign.recipes.policy import objective_params

    for name in NO_BETA:
        obj = get_objective(name)
        with pytest.raises(ValueError) as err:
            objective_params(obj, 0.1, {})
        assert str(err.value).startswith(no_beta_message(obj)) and "remove beta from the config" in str(err.value)
    with pytest.raises(ValueError, match=r"eta = 1/beta"):
        objective_params(get_objective("sppo_hard"), 0.001, {})


PAIRWISE_WITH_BETA = sorted(name for name, obj in OBJECTIVES.items()
                            if obj.kind == "pairwise" and "beta" in obj.params)


@pytest.mark.parametrize("name", PAIRWISE_WITH_BETA)
def test_api_without_beta_uses_the_objectives_default(name):
    """pairwise_loss(name, ...) with beta unset equals the registry call with no parameters: simpo's
    2.0, longpo's and selm's 0.01, not a blanket 0.1."""
    g = torch.Generator().manual_seed(3)
    policy = -torch.rand(4, 2, generator=g, dtype=torch.float64) * 5 - 1
    reference = -torch.rand(4, 2, generator=g, dtype=torch.float64) * 5 - 1
    lengths = torch.randint(1, 9, (4, 2), generator=g).to(torch.float64)
    feats = {"soft_label": torch.full((4,), 0.7, dtype=torch.float64),
             "ref_sample_logps": -torch.rand(4, generator=g, dtype=torch.float64) * 9,
             "ref_sample_reference_logps": -torch.rand(4, generator=g, dtype=torch.float64) * 9,
             "long_chosen_nll": torch.rand(4, generator=g, dtype=torch.float64)}
    from prefalign.types import SeqLogps

    batch = SeqLogps(policy=policy, reference=reference, n_tokens=lengths, features=feats)
    expected = get_objective(name)(batch).per_example
    got = pairwise_loss(name, policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1],
                        chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1], features=feats)
    close(got, expected)


def test_api_default_beta_differs_from_a_blanket_point_one():
    """SimPO's default beta is 2.0: logp (-4, -9), |y| (2, 3), gamma 1: margin 2 (-2 + 3) - 1 = 1 ->
    log(1 + e^-1) = 0.3132617; with beta 0.1 it would be log(1 + e^0.9) = 1.2411..."""
    loss = pairwise_loss("simpo", t([-4.0]), t([-9.0]), chosen_lengths=t([2.0]), rejected_lengths=t([3.0]))
    close(loss, [0.3132617], tol=1e-6)


def test_orpo_prompt_and_response_nll_is_switched_on_by_its_parameter():
    """The parameter value names the extra feature; the default keeps TRL's response-only NLL
    (training with the authors' choice: tests/train/test_orpo_prompt_nll.py)."""
    orpo = get_objective("orpo")
    assert orpo.features_for({"nll_tokens": "prompt_and_response"}) == ("lengths", "prompt_and_response_nll")
    assert orpo.features_for({}) == orpo.features == ("lengths",)


def test_features_when_must_name_a_parameter():
    # feature names themselves are checked against prefalign.features' suppliers when a run prepares
    # its data (tests/test_features.py): the pure losses cannot import that package
    from prefalign.losses.registry import objective

    with pytest.raises(ValueError, match="not its parameters"):
        objective("x_test", kind="pairwise", paper="", reference=False,
                  features_when=(("flag", True, ("lengths",)),))(lambda batch, *, other=0: None)
    assert "x_test" not in OBJECTIVES
