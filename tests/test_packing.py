"""Padding-free packing (packing.py): the layout checked against the rows it packs, and every
objective family's step (policy, reference, features, loss, gradients) against the padded step."""

from __future__ import annotations

import json
import random

import pytest
import torch

from prefalign.packing import PackOptions, choose_packing, first_fit, pack_rows, prompt_units
from prefalign.models.causal_lm import load_model
from tests_support import FIXTURES


def random_rows(seed: int, n: int = 9, share: bool = False) -> list[tuple[list[int], int]]:
    """(ids, response start) rows of random lengths; with `share`, rows come in threes with one prompt."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = [rng.randrange(3, 50) for _ in range(rng.randrange(1, 9))]
        for _ in range(3 if share else 1):
            rows.append((prompt + [rng.randrange(3, 50) for _ in range(rng.randrange(1, 9))], len(prompt)))
    return rows[:n]


def check_layout(rows, packed, t_max: int) -> None:
    """Every token of every row sits at its packed position with its position id, and a query
    position attends to exactly the packed positions of its own row's earlier tokens."""
    ids, pos, mask = packed.input_ids.flatten(), packed.position_ids.flatten(), packed.mask()
    flat_mask = torch.block_diag(*[m[0] for m in mask])  # rows never see each other
    for r, (seq, _) in enumerate(rows):
        where = packed.where[r * t_max: r * t_max + len(seq)]
        assert ids[where].tolist() == seq and pos[where].tolist() == list(range(len(seq)))
        for t in range(len(seq)):
            allowed = set(flat_mask[where[t]].nonzero().flatten().tolist())
            assert allowed == set(where[: t + 1].tolist()), f"row {r} token {t}"


@pytest.mark.parametrize("share", [False, True])
def test_packed_layout_matches_each_row(share):
    for seed in range(4):
        rows = random_rows(seed, share=share)
        t_max = max(len(s) for s, _ in rows)
        packed = pack_rows(rows, t_max, 0, PackOptions(capacity=20, share_prompt=share))
        check_layout(rows, packed, t_max)
        total = sum(len(s) for s, _ in rows)
        if share:  # each group of three holds its prompt once
            assert packed.tokens == total - 2 * sum(start for _, start in rows[::3])
        else:
            assert packed.tokens == total
        # no packed row beyond twice the capacity
        assert packed.input_ids.shape[1] <= 40


def test_first_fit_longest_first_and_the_row_length_that_computes_least():
    pieces = [(0, [i], n) for i, n in enumerate((5, 3, 5, 2, 5))]
    # longest first, each into the first row with room: [5 + 3], [5 + 2], [5]
    assert [(fill, [p[1][0] for p in placed]) for fill, placed in first_fit(pieces, 8)] == \
        [(8, [0, 1]), (7, [2, 3]), (5, [4])]
    rows = [([5] * n, 1) for _, _, n in pieces]
    packed = pack_rows(rows, 5, 0, PackOptions(capacity=8, share_prompt=False))
    # rows of 8 compute 3 x 8 = 24 positions; rows of 10 ([5 + 5], [5 + 3 + 2]) compute 20, all tokens
    assert packed.input_ids.shape == (2, 10) and packed.tokens == packed.slots == 20
    check_layout(rows, packed, 5)


def test_prompt_units_group_rows_by_prompt_and_the_prompt_nll_row_joins_them():
    rows = [([1, 2, 3, 4], 2), ([1, 2, 5], 2), ([1, 2, 3, 4], 0), ([7, 8, 9], 1), ([1, 9], 1)]
    units = prompt_units(rows, share_prompt=True)
    assert sorted((p, m) for p, m in units) == [(1, [3]), (1, [4]), (2, [0, 1, 2])]
    # the duplicate (row 2 is row 0 whole) is computed once: 2 prompt + 2 + 1 tail tokens, then 3 + 2
    packed = pack_rows(rows, 4, 0, PackOptions(capacity=8))
    assert packed.tokens == 5 + 3 + 2
    check_layout(rows, packed, 4)


def test_choose_packing_auto_true_false(tiny_model_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    llama = load_model(str(tiny_model_dir))
    assert choose_packing([llama], "auto", "auto", 64) == PackOptions(64, True)
    assert choose_packing([llama], "auto", "false", 64) == PackOptions(64, False)
    assert choose_packing([llama], "false", "auto", 64) is None
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    assert choose_packing([llama, gpt2], "auto", "auto", 64) is None  # auto: padded where unsupported
    with pytest.raises(ValueError, match=r"packing: true, but model type 'gpt2'.*set packing: false"):
        choose_packing([llama, gpt2], "true", "auto", 64)
    llama.set_attn_implementation("eager")
    assert choose_packing([llama], "true", "true", 64) == PackOptions(64, True)
    llama.config._attn_implementation = "flash_attention_2"  # varlen: boundaries only, no tree mask
    assert choose_packing([llama], "auto", "auto", 64) == PackOptions(64, False)
    with pytest.raises(ValueError, match=r"share_prompt: true, but flash_attention_2 takes sequence boundaries"):
        choose_packing([llama], "auto", "true", 64)


def test_config_keys_accept_yaml_booleans_and_refuse_the_rest(tiny_model_dir):
    from prefalign.config import ConfigError, load_config

    base = [f"model={tiny_model_dir}", "data.train=x.jsonl"]
    cfg = load_config(None, base + ["packing=true", "share_prompt=false"])
    assert (cfg.packing, cfg.share_prompt) == ("true", "false")
    assert (load_config(None, base).packing, load_config(None, base).share_prompt) == ("auto", "auto")
    with pytest.raises(ConfigError, match="packing must be auto, true or false, got 'yes please'"):
        load_config(None, base + ["packing=yes please"])
    with pytest.raises(ConfigError, match="share_prompt: true needs packed rows"):
        load_config(None, base + ["packing=false", "share_prompt=true"])


def test_padding_share_metric_in_metrics_jsonl(tiny_model_dir, tmp_path):
    from prefalign.config import load_config
    from prefalign.recipes.policy import train

    data = FIXTURES / "hh_harmless_64.jsonl"
    shares = {}
    for mode in ("false", "true"):
        out = tmp_path / mode
        summary = train(load_config(None, [
            f"model={tiny_model_dir}", f"data.train={data}", f"output_dir={out}", "max_steps=2", "batch_size=4", "data.max_examples=12",
            "max_length=160", "max_prompt_length=64", "logging_steps=1", "data.eval_fraction=0.2", "progress=false",
            f"packing={mode}", "share_prompt=false"]))
        assert summary["packing"] == ("off" if mode == "false" else "packed")
        steps = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
        shares[mode] = [m["tokens/padding_share"] for m in steps]
        if mode == "false":  # padded rows: the share is the padded positions' share, from the logged counts
            for m in steps:
                assert m["tokens/padding_share"] == pytest.approx(1 - m["tokens"] / m["padded_tokens"])
                assert m["tokens/padding_share"] > 0.1
        else:  # packed rows without a shared prompt hold every token once, so tokens fill what is computed
            for m in steps:
                assert m["tokens/padding_share"] == pytest.approx(1 - m["tokens"] / m["padded_tokens"])
    # rows near max_length leave first-fit nothing to combine; shorter ones share packed rows
    assert all(p <= q for p, q in zip(shares["true"], shares["false"])) and sum(shares["true"]) < sum(shares["false"])
