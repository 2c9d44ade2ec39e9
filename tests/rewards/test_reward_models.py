"""Reward models on tiny config-built backbones: shapes, step positions, save/load, judge, data validation."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.data.records import DataError
from prefalign.rewards.backbone import RewardBackbone
from prefalign.rewards.data import build_batch, load_ratings, load_steps
from prefalign.rewards.heads import REWARD_KINDS
from prefalign.rewards.losses import gaussian_preference_probability
from prefalign.rewards.model import RewardModel, load_reward_model, save_reward_model
from prefalign.rewards.steps import encode_steps
from rm_support import tiny_bert_folder
from tests_support import write_jsonl

PROMPTS = ["\n\nHuman: how do I bake bread?\n\nAssistant:", "\n\nHuman: hi\n\nAssistant:", "q"]
A = [" Mix flour and water, then bake.", " Hello! How can I help?", " an answer"]
B = [" I will not help.", " Go away.", " another answer entirely"]
HEADS = {"bt": {}, "pearl": {}, "multi_objective": {"attributes": ["x", "y"], "offset": [1.0, 2.0], "scale": [2.0, 0.5]},
         "prm": {"delimiter": "\n\n"}, "gpm": {"k": 2}, "pal": {"n_users": 2, "users": ["ann", "bo"], "dim": 4}}
USERS = ["ann", "bo", "ann"]


@pytest.fixture
def tiny_bert_dir(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory)


def make(folder, kind, max_length=64):
    torch.manual_seed(0)
    return RewardModel(RewardBackbone(str(folder), max_length), kind, HEADS[kind])


def test_every_registered_kind_has_a_test_case():
    assert set(REWARD_KINDS) <= set(HEADS)


@pytest.mark.parametrize("kind", ["bt", "pearl", "multi_objective", "gpm", "pal"])
def test_head_shapes_and_probability_symmetry(tiny_bert_dir, kind):
    model = make(tiny_bert_dir, kind)
    users = USERS if kind == "pal" else None
    out = model.outputs(model.encode(PROMPTS, A, users))
    if kind == "multi_objective":
        assert out["attributes"].shape == (3, 2)
    elif kind == "gpm":
        assert out["embedding"].shape == (3, 4) and out["scales"].shape == (3, 2)
    else:
        assert out["reward"].shape == (3,)
    ab, ba = model.probabilities(PROMPTS, A, B, users=users), model.probabilities(PROMPTS, B, A, users=users)
    assert ab.shape == (3,) and torch.allclose(ab + ba, torch.ones(3), atol=1e-6)


def test_pearl_probability_is_its_gaussian_formula(tiny_bert_dir):
    model = make(tiny_bert_dir, "pearl")
    (a,), (b,) = model.score_outputs(PROMPTS, A), model.score_outputs(PROMPTS, B)
    expected = gaussian_preference_probability(a["reward"], a["std"], b["reward"], b["std"])
    assert torch.allclose(model.probabilities(PROMPTS, A, B), expected)
    assert (a["std"] > 0).all()


def test_multi_objective_direction(tiny_bert_dir):
    model = make(tiny_bert_dir, "multi_objective")
    (out,) = model.score_outputs(PROMPTS, A)
    r = model.rewards(PROMPTS, A, direction=[3.0, 4.0])
    assert torch.allclose(r, out["attributes"] @ torch.tensor([0.6, 0.8]), atol=1e-6)
    with pytest.raises(ValueError, match="non-zero"):
        model.rewards(PROMPTS, A, direction=[0.0, 0.0])
    with pytest.raises(ValueError, match="multi-objective"):
        make(tiny_bert_dir, "bt").rewards(PROMPTS, A, direction=[1.0])


def test_step_positions_on_a_hand_example(tiny_model_dir):
    bb = RewardBackbone(str(tiny_model_dir), max_length=64)
    enc = encode_steps(bb, ["Solve 2+3."], [["First, 2+3 is 5.", "So the answer is 5."]], "\n\n")
    ids, pos = enc["input_ids"][0].tolist(), enc["step_pos"].tolist()
    assert enc["step_row"].tolist() == [0, 0] and enc["kept_counts"] == [1 * 2]
    dec = bb.tokenizer.decode
    start = pos[0] - len(bb.tokenizer("First, 2+3 is 5.\n\n", add_special_tokens=False)["input_ids"]) + 1
    assert dec(ids[start:pos[0] + 1]) == "First, 2+3 is 5.\n\n"
    assert dec(ids[pos[0] + 1:pos[1] + 1]) == "So the answer is 5."
    assert pos[1] == len(ids) - 1  # a decoder's tail is empty: the last step ends the row
    assert dec(ids[:start]).endswith("Solve 2+3.")


def test_steps_that_do_not_fit_are_dropped_and_counted(tiny_model_dir):
    bb = RewardBackbone(str(tiny_model_dir), max_length=24, max_response_length=12)
    enc = encode_steps(bb, ["p"], [["one two three", "four five six seven eight", "nine ten eleven twelve"]], "\n\n")
    assert enc["kept_counts"][0] < 3 and enc["n_dropped"] == 3 - enc["kept_counts"][0]
    assert len(enc["step_pos"]) == enc["kept_counts"][0]


@pytest.mark.parametrize("kind", ["bt", "pearl", "multi_objective", "prm", "gpm", "pal", "decoder-bt"])
def test_save_load_roundtrip(tiny_bert_dir, tiny_model_dir, tmp_path, kind):
    folder = tiny_model_dir if kind in ("prm", "decoder-bt") else tiny_bert_dir
    kind = kind.removeprefix("decoder-")
    model = make(folder, kind)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.3)  # not the fresh initialisation
    responses = ["step a\n\nstep b", "only one step", "x\n\ny\n\nz"] if kind == "prm" else A
    users = USERS if kind == "pal" else None
    before = model.rewards(PROMPTS, responses, users=users) if kind != "gpm" else None
    p_before = model.probabilities(PROMPTS, responses, B, users=users)
    saved = save_reward_model(model, tmp_path / "rm")
    assert sorted(p.name for p in saved.iterdir()) == ["backbone", "head.safetensors", "reward_model.json"]
    loaded = load_reward_model(saved)
    assert loaded.kind.name == kind and loaded.head_params == model.head_params
    assert loaded.backbone.decoder == model.backbone.decoder  # a saved bare LlamaModel keeps last-token pooling
    if before is not None:
        assert torch.equal(loaded.rewards(PROMPTS, responses, users=users), before)
    assert torch.equal(loaded.probabilities(PROMPTS, responses, B, users=users), p_before)


def test_reward_model_judge(tiny_bert_dir, tmp_path):
    from prefalign.judges import make_judge

    model = make(tiny_bert_dir, "bt")
    save_reward_model(model, tmp_path / "bt")
    judge = make_judge("reward_model", path=str(tmp_path / "bt"))
    sa, sb = judge.score(PROMPTS, A), judge.score(PROMPTS, B)
    p = judge.compare(PROMPTS, A, B)
    assert p == pytest.approx([1 / (1 + math.exp(-(x - y))) for x, y in zip(sa, sb)], abs=1e-6)
    assert judge.stats.verdicts == 9
    save_reward_model(make(tiny_bert_dir, "multi_objective"), tmp_path / "mo")
    mo = make_judge("reward_model", path=str(tmp_path / "mo"), direction=[1.0, 0.0])
    (out,) = mo.model.score_outputs(PROMPTS, A)
    assert mo.score(PROMPTS, A) == pytest.approx(out["attributes"][:, 0].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="non-zero"):
        make_judge("reward_model", path=str(tmp_path / "mo"), direction=[0.0, 0.0])


def test_step_data_validation_names_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "steps.jsonl", [
        {"prompt": "p", "steps": ["a", "b"], "labels": [1, 0]},
        {"prompt": "p", "response": "a\n\nb\n\nc", "labels": [1, 0]}])
    with pytest.raises(DataError, match=r"row 2, field 'labels'.*3 steps"):
        load_steps(str(path))
    examples, info = load_steps(str(path), on_bad_row="skip")
    assert len(examples) == 1 and info["load"]["skipped"] == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "steps": ["a"], "labels": [2]}])
    with pytest.raises(DataError, match=r"row 1, field 'labels\[0\]'"):
        load_steps(str(bad))


def test_rating_data_masks_missing_attributes_and_rejects_unrated(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"mr": "inform(x)", "responses": [{"text": "a", "scores": {"x": 3.0}}, {"text": "b", "scores": {"x": 1, "y": 2}}]}])
    examples, _ = load_ratings(str(path), ["x", "y"], prompt_field="mr")
    assert [e.rating_mask for e in examples] == [[1.0, 0.0], [1.0, 1.0]]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"mr": "m", "responses": [{"text": "a", "scores": {"z": 1}}]}])
    with pytest.raises(DataError, match=r"row 1, field 'responses\[0\].scores'"):
        load_ratings(str(bad), ["x", "y"], prompt_field="mr")


def test_prm_batch_labels_follow_kept_steps(tiny_model_dir, tmp_path):
    model = make(tiny_model_dir, "prm")
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "steps": ["a b", "c d", "e"], "labels": [1, 1, 0]},
                                              {"prompt": "q", "steps": ["f"], "labels": [0]}])
    examples, _ = load_steps(str(path))
    batch = build_batch(model, examples, [0, 1])
    assert batch["step_labels"].tolist() == [1.0, 1.0, 0.0, 0.0] and batch["step_row"].tolist() == [0, 0, 0, 1]
    per, metrics = model(batch)
    assert per.shape == (2,) and torch.isfinite(per).all()
