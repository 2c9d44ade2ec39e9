"""Helpers for the reward-model tests: a tiny config-built BERT with a WordPiece tokenizer trained on
the HH fixture, and a few file writers."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def hh_rows() -> list[dict]:
    return [json.loads(x) for x in (FIXTURES / "hh_harmless_64.jsonl").read_text(encoding="utf-8").splitlines()]


def build_tiny_bert(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    texts = [r["chosen"] for r in hh_rows()] + [r["rejected"] for r in hh_rows()]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=512, pad_token_id=fast.pad_token_id)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


BUILT: dict[str, Path] = {}


def tiny_bert_folder(tmp_path_factory) -> Path:
    """One tiny BERT per test session, whichever module asks first. (A tests/rewards/conftest.py
    fixture would shadow the top-level conftest module that other tests import helpers from.)"""
    if "bert" not in BUILT:
        BUILT["bert"] = build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    return BUILT["bert"]
