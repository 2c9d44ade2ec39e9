"""ORPO with its authors' NLL over prompt and response (nll_tokens=prompt_and_response): the
feature comes from one supplier (features/sequence_nll.py) with no trainer change; its value is
checked against a naive unpadded forward, and a short run on real HH pairs trains with it."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from prefalign.config import load_config
from prefalign.data.formats.readers import load_examples
from prefalign.features import collate, tokenize
from prefalign.losses import get_objective
from prefalign.models.causal_lm import PolicyLogps, load_model
from prefalign.recipes.policy import train
from prefalign.train.step import forward_batch


def whole_sequence_nll(model, ids: list[int]) -> torch.Tensor:
    """Mean -log p(ids[t] | ids[:t]) over t >= 1, from one unpadded forward."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return -torch.stack([logp[t - 1, ids[t]] for t in range(1, len(ids))]).mean()


def test_prompt_and_response_nll_equals_a_naive_forward(tiny_model_dir, tokenizer, hh_file):
    model = load_model(str(tiny_model_dir)).eval()
    orpo = get_objective("orpo")
    bound = replace(orpo, features=orpo.features_for({"nll_tokens": "prompt_and_response"}))
    examples, _ = load_examples(hh_file)
    tok = tokenize(examples[:3], tokenizer, 160, 96, features=bound.features)
    seq = forward_batch(PolicyLogps(model), collate(tok, tokenizer.pad_token_id, bound.features), None, bound)
    got = seq.features["prompt_and_response_nll"]
    with torch.no_grad():
        want = torch.stack([whole_sequence_nll(model, t.sequences[0]) for t in tok])
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-5)
    # the prompt counts: the response-only NLL of the same rows is a different number
    response_only = -(seq.policy[:, 0] / seq.n_tokens[:, 0])
    assert (got.detach() - response_only.detach()).abs().min() > 1e-3


def test_orpo_trains_with_the_authors_nll(tiny_model_dir, hh_file, tmp_path):
    cfg = load_config(None, [f"model={tiny_model_dir}", f"data.train={hh_file}", "objective=orpo",
                             "objective_args={nll_tokens: prompt_and_response}", f"output_dir={tmp_path / 'run'}",
                             "max_steps=6", "batch_size=4", "learning_rate=1e-3", "max_length=128",
                             "data.eval_fraction=0.15", "logging_steps=1", "progress=false", "seed=3"])
    summary = train(cfg)
    assert summary["objective_params"]["nll_tokens"] == "prompt_and_response"
    nll = [json.loads(line)["nll"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
           if "nll" in json.loads(line)]
    assert len(nll) == 6 and nll[-1] < nll[0]  # the SFT term the authors add falls as it trains
