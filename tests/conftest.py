"""Shared fixtures: a real BPE tokenizer and a tiny Llama built from a config, saved locally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
torch.set_num_threads(2)


def hh_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "hh_harmless_64.jsonl").read_text(encoding="utf-8").splitlines()]


def build_tokenizer(folder: Path, vocab_size: int = 512):
    """Byte-level BPE trained on the HH fixture text, with BOS prepended by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [r["chosen"] for r in hh_rows()] + [r["rejected"] for r in hh_rows()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|bos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                       special_tokens=[("<|bos|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}\n\nHuman: {{ m['content'] }}"
        "{% else %}\n\nAssistant: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}\n\nAssistant:{% endif %}")
    fast.save_pretrained(folder)
    return fast


def build_tiny_llama(folder: Path, tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer(folder)
    build_tiny_llama(folder, tok)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from prefalign.models.causal_lm import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def hh_file() -> Path:
    return FIXTURES / "hh_harmless_64.jsonl"
