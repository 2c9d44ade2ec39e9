"""Rankings and ratings to pairs, checked exactly on real fixture rows."""

from __future__ import annotations

import json

import pytest

from prefalign.data.builders.pairs import list_to_pairs, pairs_from_lists
from prefalign.data.formats.readers import load_examples
from prefalign.data.records import Example
from tests_support import FIXTURES, write_jsonl


def oasst():
    examples, _ = load_examples(FIXTURES / "oasst_ranked_12.jsonl")
    raw = [json.loads(x) for x in (FIXTURES / "oasst_ranked_12.jsonl").read_text().splitlines()]
    return examples, raw


def test_pair_counts_on_oasst_rankings():
    """Human ranks are distinct within a set, so no pair is tied: K-1 and K(K-1)/2 pairs per list."""
    examples, raw = oasst()
    sizes = [len(r["responses"]) for r in raw]
    for rule, expected in (("best_vs_worst", len(sizes)), ("best_vs_each", sum(k - 1 for k in sizes)),
                           ("all_pairs", sum(k * (k - 1) // 2 for k in sizes))):
        pairs, report = pairs_from_lists(examples, rule)
        assert len(pairs) == report.pairs == expected and report.dropped == {}, rule
        assert report.lists == 12
        for p in pairs:
            assert p.kind == "pair" and p.target == [1.0, 0.0]
            assert p.extra["score_chosen"] > p.extra["score_rejected"]


def test_best_vs_each_keeps_the_best_first_and_file_order_of_the_rest():
    examples, raw = oasst()
    first = raw[0]["responses"]  # sorted best first (rank 0)
    pairs = list_to_pairs(examples[0], "best_vs_each")
    assert [p.responses for p in pairs] == [[first[0]["text"], r["text"]] for r in first[1:]]


def test_ties_and_small_gaps_are_dropped_and_counted():
    ex = Example("p", ["a", "b", "c", "d"], [3.0, 3.0, 2.5, 1.0], "list", "f:1")
    pairs, report = pairs_from_lists([ex], "all_pairs", min_gap=1.0)
    # 6 candidates: (a,b) tied; (a,c), (b,c) gap 0.5 < 1; (c,d) gap 1.5; (a,d), (b,d) gap 2
    assert sorted(tuple(p.responses) for p in pairs) == [("a", "d"), ("b", "d"), ("c", "d")]
    assert report.dropped == {"tied scores": 1, "score gap below 1.0": 2}
    each, report = pairs_from_lists([ex], "best_vs_each")
    assert [p.responses for p in each] == [["a", "c"], ["a", "d"]] and report.dropped == {"tied scores": 1}


def test_weighted_aspects_on_real_multi_aspect_ratings(tmp_path):
    """SF-NLG human ratings: ranking by 0.5 informativeness + 0.5 naturalness."""
    raw = [json.loads(x) for x in (FIXTURES / "sf_nlg_12.jsonl").read_text().splitlines()]
    rows = [{"prompt": r["mr"], "responses": r["responses"]} for r in raw]
    path = write_jsonl(tmp_path / "sf.jsonl", rows)
    weights = {"informativeness": 0.5, "naturalness": 0.5}
    examples, report = load_examples(path, score_aspect=weights, on_bad_row="skip")
    score = lambda x: 0.5 * x["scores"]["informativeness"] + 0.5 * x["scores"]["naturalness"]  # noqa: E731
    distinct = [r for r in raw if len({x["text"] for x in r["responses"]}) == len(r["responses"])]
    kept = [r for r in distinct if len({score(x) for x in r["responses"]}) > 1]
    # real groups hold identical outputs of different systems (here every such group has two
    # responses, so merging leaves one: nothing to rank), and groups rated all the same
    assert all(len(r["responses"]) == 2 for r in raw if r not in distinct)
    assert report.skipped == {"responses: all 2 responses are the same text: nothing to rank": 12 - len(distinct),
                              "responses: all responses have the same score: no preference": len(distinct) - len(kept)}
    assert len(examples) == len(kept) and report.rows == 12
    for ex, r in zip(examples, kept):
        assert ex.target == [score(x) for x in r["responses"]]
    with pytest.raises(Exception, match="has no aspect 'fluency'"):
        load_examples(path, score_aspect={"fluency": 1.0})


def test_unknown_rule_and_pairs_pass_through():
    pair = Example("p", ["a", "b"], [1.0, 0.0], "pair", "f:1")
    assert list_to_pairs(pair, "all_pairs") == [pair]
    with pytest.raises(ValueError, match="unknown pairing rule"):
        list_to_pairs(pair, "best_of_three")


def test_training_on_rankings_with_all_pairs_reports_the_pairing(tiny_model_dir, tmp_path):
    from prefalign.config import load_config
    from prefalign.recipes.policy import train

    _, raw = oasst()
    summary = train(load_config(None, [
        f"model={tiny_model_dir}", f"data.train={FIXTURES / 'oasst_ranked_12.jsonl'}", f"output_dir={tmp_path / 'run'}",
        "data.list_to_pairs=all_pairs", "data.eval_fraction=0.25", "max_steps=2", "batch_size=2", "max_length=64",
        "max_prompt_length=32", "progress=false"]))
    pairing = summary["data"]["pairing"]
    assert pairing["train"]["rule"] == "all_pairs" and pairing["train"]["lists"] == 9
    assert pairing["eval"]["lists"] == 3
    total = sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in raw)
    assert pairing["train"]["pairs"] + pairing["eval"]["pairs"] == total
    assert summary["data"]["train_examples"] == pairing["train"]["pairs"]


def test_curriculum_orders_each_prompts_pairs_by_gap_easy_first():
    """Scores a=4, b=3, c=1: pairs (a,c) gap 3, (b,c) gap 2, (a,b) gap 1. With 2 stages the easiest
    pair goes to stage 1 and the rest to the last stage; a plain pair stays in stage 1."""
    from prefalign.data.builders.pairs import curriculum_stages

    ranked = Example("p", ["a", "b", "c"], [4.0, 3.0, 1.0], "list", "f:1")
    plain = Example("q", ["x", "y"], [1.0, 0.0], "pair", "f:2")
    stages = curriculum_stages([ranked, plain], 2)
    assert [p.responses for p in stages[0]] == [["a", "c"], ["x", "y"]]
    assert [p.responses for p in stages[1]] == [["b", "c"], ["a", "b"]]
    three = curriculum_stages([ranked], 3)
    assert [[p.responses for p in s] for s in three] == [[["a", "c"]], [["b", "c"]], [["a", "b"]]]


def test_curriculum_stage_sizes_on_oasst():
    from prefalign.data.builders.pairs import curriculum_stages

    examples, raw = oasst()
    n_pairs = [len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in raw]
    stages = curriculum_stages(examples, 3)
    assert [len(s) for s in stages[:2]] == [sum(n >= 1 for n in n_pairs), sum(n >= 2 for n in n_pairs)]
    assert sum(len(s) for s in stages) == sum(n_pairs)


@pytest.mark.parametrize("reference", ["previous", "initial"])
def test_curriculum_trains_stages_in_order(tiny_model_dir, tmp_path, reference):
    from prefalign.config import load_config
    from prefalign.recipes.policy import train_curriculum

    out = tmp_path / "run"
    summary = train_curriculum(load_config(None, [
        f"model={tiny_model_dir}", f"data.train={FIXTURES / 'oasst_ranked_12.jsonl'}", f"output_dir={out}",
        "data.curriculum_stages=2", f"data.curriculum_reference={reference}", "data.eval_fraction=0.25",
        "max_steps=2", "batch_size=2", "max_length=64", "max_prompt_length=32", "progress=false"]))
    stages = summary["curriculum"]
    assert [s["stage"] for s in stages] == [1, 2] and all(s["pairs"] > 0 for s in stages)
    assert stages[0]["model"] == str(tiny_model_dir)
    assert stages[1]["model"] == str(out / "stage-1" / "run" / "final")
    expected_ref = stages[1]["model"] if reference == "previous" else str(tiny_model_dir)
    assert stages[1]["reference"] == expected_ref
    stage2 = json.loads((out / "stage-2" / "run" / "summary.json").read_text())
    assert stage2["config"]["reference_model"] == (None if reference == "previous" else str(tiny_model_dir))
    assert summary["final_model"] == str(out / "stage-2" / "run" / "final")
    assert (out / "heldout.jsonl").exists() and (out / "summary.json").exists()


def test_reward_augmented_relabeling_on_ultrafeedback_scores():
    from prefalign.data.builders.pairs import reward_augment

    examples, _ = load_examples(FIXTURES / "ultrafeedback_12.jsonl")
    raw = [json.loads(x) for x in (FIXTURES / "ultrafeedback_12.jsonl").read_text().splitlines()]
    out, report = reward_augment(examples, template="{prompt} [score {score:g}]")
    scored = [r for r in raw if r["score_chosen"] > r["score_rejected"]]
    assert len(out) == 2 * len(scored) == report.pairs
    assert sum(report.dropped.values()) == 12 - len(scored)
    for (a, b), r in zip(zip(out[::2], out[1::2]), scored):
        assert a.prompt == f"{r['prompt']} [score {r['score_chosen']:g}]" and a.responses == [r["chosen"], r["rejected"]]
        assert b.prompt == f"{r['prompt']} [score {r['score_rejected']:g}]" and b.responses == [r["rejected"], r["chosen"]]


def test_reward_conditioning_of_chat_prompts_and_unscored_pairs():
    from prefalign.data.builders.pairs import condition_prompt, reward_augment

    chat = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    assert condition_prompt(chat, 9, "{prompt} ({score:g})")[1]["content"] == "hi (9)"
    assert chat[1]["content"] == "hi"  # the input is not modified
    out, report = reward_augment([Example("p", ["a", "b"], [1.0, 0.0], "pair", "f:1")])
    assert out == [] and report.dropped == {"no scores": 1}
    with pytest.raises(ValueError, match="needs {prompt} and {score"):
        reward_augment([], template="no placeholders")


def test_training_with_reward_augmentation_doubles_the_scored_pairs(tiny_model_dir, tmp_path):
    from prefalign.config import load_config
    from prefalign.recipes.policy import train

    summary = train(load_config(None, [
        f"model={tiny_model_dir}", f"data.train={FIXTURES / 'ultrafeedback_12.jsonl'}", f"output_dir={tmp_path / 'r'}",
        "data.reward_augment=true", "data.eval_fraction=0.25", "max_steps=2", "batch_size=2", "max_length=64",
        "max_prompt_length=32", "progress=false"]))
    aug = summary["data"]["reward_augment"]
    assert summary["data"]["train_examples"] == aug["train"]["pairs"] == 2 * (9 - sum(aug["train"]["dropped"].values()))
    assert summary["data"]["eval_examples"] == aug["eval"]["pairs"]
