"""Helpers for the reward-model tests: a tiny config-built BERT with a WordPiece tokenizer trained on
the HH fixture, and a few file writers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def hh_rows() -> list[dict]:
    return [json.loads(x) for x in (FIXTURES / "hh_harmless_64.jsonl").read_text(encoding="utf-8").splitlines()]


def build_tiny_bert(folder: Path, seed: int = 0, hidden: int = 32, vocab_size: int = 600) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    texts = [r["chosen"] for r in hh_rows()] + [r["rejected"] for r in hh_rows()]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # The vocabulary is built here, not by tokenizers' WordPieceTrainer: the trainer breaks ties
    # between equally frequent merges in hash-map order, which changes per process, so token ids
    # (and every feature the tiny BERT computes) differed between test sessions.
    words = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    frequent = [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if len(w) > 1]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    vocab += frequent[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
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
