"""The text testbed the language-model claims share: the shipped tiny model and real HH-RLHF pairs.

The model is the 1.8M-parameter Llama shipped in assets/tiny-base; the pairs are the HH-RLHF
harmless-base test split shipped in assets/data, which that model never saw in pretraining.
Rows the loader rejects (an empty or identical response) are skipped and counted in `report`.
"""

from __future__ import annotations

import random

import torch

from prefalign.data.collate import pad_rows
from prefalign.data.formats.readers import load_examples
from prefalign.data.tokenize import tokenize_examples
from prefalign.logps import token_logps
from prefalign.recipes.quickstart import ASSETS, HH_FILE

TINY_MODEL = ASSETS / "tiny-base"


def hh_split(n_train: int, n_held: int, seed: int = 0) -> tuple[list, list, dict]:
    """Disjoint train / held-out pairs from the shipped HH-RLHF file, shuffled with `seed`."""
    examples, report = load_examples(HH_FILE, on_bad_row="skip")
    if n_train + n_held > len(examples):
        raise ValueError(f"{HH_FILE} has {len(examples)} usable pairs, asked for {n_train} + {n_held}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    picked = [examples[i] for i in order]
    return picked[:n_train], picked[n_train:n_train + n_held], report.as_dict()


def pair_logps(model, tokenizer, examples: list, max_length: int, max_prompt_length: int,
               batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 2] summed response log-probs (chosen, rejected) with the autograd graph kept when grad is
    enabled, and [N, 2] response token counts; tokenized exactly as training tokenizes pairs."""
    tokenized = tokenize_examples(examples, tokenizer, max_length, max_prompt_length)
    sums, counts = [], []
    for s in range(0, len(tokenized), batch_size):
        rows = [(e.sequences[k], e.response_starts[k]) for e in tokenized[s:s + batch_size] for k in (0, 1)]
        b = pad_rows(rows, tokenizer.pad_token_id)
        tok = token_logps(model, b.input_ids, b.attention_mask, b.response_mask, "full", b.target_index)
        sums.append(tok.sum(1))
        counts.append(b.scored_mask().sum(1))
    return torch.cat(sums).view(-1, 2), torch.cat(counts).view(-1, 2).float()
