"""Negatives-only examples for D2O (arXiv:2403.03419): exactly the layout the d2o objective reads."""

import json
from pathlib import Path

import pytest

from prefalign.data.builders.negatives import d2o_negatives
from prefalign.data.builders.pipeline import BuildContext, run_builder
from prefalign.data.formats.readers import load_examples
from prefalign.data.records import DataError, Example, make_list
from prefalign.losses import get_objective
from prefalign.recipes.policy import prepare_examples

FIX = Path(__file__).resolve().parents[1] / "fixtures"


class FakeGenerator:
    """Stands in for generate(): K texts per prompt, recording the settings it was given."""

    def __init__(self, fn):
        self.fn, self.settings = fn, None

    def __call__(self, prompts, settings):
        self.settings = settings
        return [[self.fn(p, j) for j in range(settings.num_return_sequences)] for p in prompts]


def test_hh_pairs_become_negative_plus_samples():
    """64 real HH-RLHF harmless pairs: each becomes [rejected reply, 3 generated samples] with
    target [0, 1, 1, 1]; the chosen reply is not used."""
    pairs, _ = load_examples(FIX / "hh_harmless_64.jsonl")
    gen = FakeGenerator(lambda p, j: f"sample {j} for a prompt of {len(p)} chars")
    out, report = d2o_negatives(pairs, num_samples=3, samples="generate", context=BuildContext(generator=gen, seed=4))
    assert len(out) == 64 and report.as_dict() == {"negatives": 64, "samples": 192, "dropped": {}}
    assert gen.settings.num_return_sequences == 3 and gen.settings.seed == 4 and gen.settings.do_sample
    for e, p in zip(out, pairs):
        assert e.kind == "list" and e.prompt == p.prompt and e.target == [0.0, 1.0, 1.0, 1.0]
        assert e.responses[0] == p.responses[1] and p.responses[0] not in e.responses
    assert prepare_examples(get_objective("d2o"), out, "best_vs_worst", "test") == out


def test_samples_from_the_data_and_their_drops(tmp_path):
    rows = [{"prompt": "q1", "chosen": "good", "rejected": "bad", "samples": ["s1", "bad", "s1", " ", "s2", "s3"]},
            {"prompt": "q2", "chosen": "good", "rejected": "bad", "samples": ["bad"]}]
    path = tmp_path / "neg.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = load_examples(path, on_bad_row="skip")
    assert pairs[0].extra["samples"][0] == "s1"
    with pytest.raises(DataError, match=r"neg.jsonl, row 1, field 'samples\[3\]'"):
        d2o_negatives(pairs, num_samples=5, context=BuildContext())  # the blank sample is a data error
    pairs[0].extra["samples"] = ["s1", "bad", "s1", "s2", "s3"]
    out, report = d2o_negatives(pairs, num_samples=4, context=BuildContext())
    # first 4 of row 1: s1, bad (= the negative), s1 (repeat), s2 -> [bad, s1, s2]; row 2 has none left
    assert [e.responses for e in out] == [["bad", "s1", "s2"]]
    assert report.dropped == {"sample identical to the negative": 2, "repeated sample": 1,
                              "prompt with no usable sample": 1}


def test_lists_and_unpaired_give_their_negative():
    ranked = Example("q", ["best", "worst", "mid"], [3.0, 1.0, 2.0], "list", "f:1", {"samples": ["s"]})
    liked = Example("q", ["fine"], [1.0], "unpaired", "f:2", {"samples": ["s"]})
    disliked = Example("q", ["awful"], [0.0], "unpaired", "f:3", {"samples": ["s"]})
    out, report = run_builder("d2o_negatives", [ranked, liked, disliked], {"num_samples": 1})
    assert [e.responses for e in out] == [["worst", "s"], ["awful", "s"]]
    assert report["dropped"] == {"no human negative in a unpaired example": 1}


def test_output_reads_back_as_a_ranked_row():
    e = d2o_negatives([Example("q", ["good", "bad"], [1.0, 0.0], "pair", "f:1", {"samples": ["s1", "s2"]})],
                      context=BuildContext())[0][0]
    row = {"prompt": e.prompt, "responses": [{"text": t, "score": s} for t, s in zip(e.responses, e.target)]}
    back = make_list(row, "written.jsonl", 1)
    assert back.responses == ["bad", "s1", "s2"] and back.target == [0.0, 1.0, 1.0]


def test_missing_samples_and_generator_are_clear_errors():
    pair = Example("q", ["good", "bad"], [1.0, 0.0], "pair", "data.jsonl:7")
    with pytest.raises(DataError, match=r"data.jsonl, row 7, field 'samples'"):
        d2o_negatives([pair], context=BuildContext())
    with pytest.raises(ValueError, match="needs a generator"):
        d2o_negatives([pair], samples="generate", context=BuildContext())


def test_builders_register_when_the_pipeline_is_imported():
    import subprocess
    import sys

    code = "import prefalign.data.builders.pipeline as p; print(' '.join(sorted(p.BUILDERS)))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"rso", "deita_select", "dedup", "length_filter", "d2o_negatives"} <= set(names)
    from prefalign.data.builders.pipeline import BUILDERS

    assert BUILDERS["rso"].paper == "2309.06657" and BUILDERS["d2o_negatives"].paper == "2403.03419"
    assert BUILDERS["deita_select"].params()["max_similarity"] == 0.9
