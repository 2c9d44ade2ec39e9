"""The causal-LM family is the LM path seen through the family interface: FamilyTrainee on it
gives the same DPO losses and gradients as the LM recipe's PolicyTrainee, batch for batch."""

from __future__ import annotations

import copy

import torch

from prefalign.data.formats.readers import load_examples
from prefalign.data.tokenize import tokenize_examples
from prefalign.families.base import FamilyTrainee, get_family
from prefalign.losses import get_objective
from prefalign.models.causal_lm import FrozenReference, PolicyLogps, load_model
from prefalign.train.trainee import PolicyTrainee


class Unwrap:
    def unwrap_model(self, m):
        return m


def test_family_trainee_equals_policy_trainee_on_a_tiny_llama(tiny_model_dir, tokenizer, hh_file, tmp_path):
    examples, _ = load_examples(hh_file)
    tok = tokenize_examples(examples[:4], tokenizer, max_length=96, max_prompt_length=64)
    obj, params = get_objective("dpo"), {"beta": 0.1, "label_smoothing": 0.0, "length_normalize": False}
    model = load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy off the reference so the loss is not log 2 everywhere
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    reference = load_model(str(tiny_model_dir)).eval().requires_grad_(False)
    lm, fam_policy = PolicyLogps(model), PolicyLogps(copy.deepcopy(model))
    fam = get_family("causal_lm")(tokenizer=tokenizer)
    by_recipe = PolicyTrainee(Unwrap(), lm, obj, params, FrozenReference(reference, "lean"), tokenizer)
    by_family = FamilyTrainee(Unwrap(), fam, fam_policy, PolicyLogps(reference), obj, params)
    want, _ = by_recipe.loss(by_recipe.make_batch(tok, [0, 1, 2, 3], "train"))
    got, _ = by_family.loss(by_family.make_batch(tok, [0, 1, 2, 3], "train"))
    torch.testing.assert_close(got, want)
    want.sum().backward()
    got.sum().backward()
    for (name, a), (_, b) in zip(lm.named_parameters(), fam_policy.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
    fam.save(fam_policy, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file() and (tmp_path / "saved" / "tokenizer.json").is_file()
