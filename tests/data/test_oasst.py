"""OpenAssistant message trees -> ranked lists: the normalized view reproduced, filters counted."""

import json
from pathlib import Path

import pytest

from prefalign.data.formats.oasst import TreeOptions, TreeReport, read_oasst_trees, tree_examples
from prefalign.data.formats.readers import iter_rows, load_examples
from prefalign.data.records import DataError

FIX = Path(__file__).resolve().parents[1] / "fixtures"
TREES = FIX / "oasst_trees_6.jsonl"
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_trees_reproduce_the_normalized_ranked_view():
    """The first 6 trees hold 13 ranked sets; the first 12 are oasst_ranked_12.jsonl, which was
    made independently from the same trees: same order, prompts (chat history), replies, ranks."""
    examples, report = load_examples(FIX / "oasst_trees_6.jsonl")
    ranked, _ = load_examples(FIX / "oasst_ranked_12.jsonl")
    assert report.rows == 6 and report.kept == 13 and len(examples) == 13
    for got, want in zip(examples[:12], ranked):
        assert got.kind == want.kind == "list"
        assert got.prompt == want.prompt and got.responses == want.responses and got.target == want.target
        assert "oasst-en100-" + got.extra["id"] == want.extra["id"]
    # trees 3, 5 and 6 each have one assistant reply nobody ranked: counted, not silently dropped
    assert report.as_dict()["left_out_by_reason"] == {"reply without a rank": 3}


def test_prompt_is_history_ending_with_the_user_turn():
    examples, _ = read_oasst_trees(iter_rows(TREES), str(TREES))
    deep = [e for e in examples if len(e.prompt) > 1]
    assert deep, "the fixture has follow-up turns"
    for e in examples:
        roles = [m["role"] for m in e.prompt]
        assert roles[-1] == "user" and roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert e.target == sorted(e.target, reverse=True) and e.target[0] == 0.0  # best first, -rank


def test_skip_synthetic_drops_the_synthetic_tree_and_counts_it():
    """Tree 1 is all model-written (4 messages, chip20b): its root is left out, the 3 below it counted."""
    examples, report = read_oasst_trees(iter_rows(TREES), str(TREES), TreeOptions(skip_synthetic=True))
    assert len(examples) == 12 and report.lists == 12 and report.trees == 6
    assert report.left_out == {"synthetic message": 1, "below a left-out message": 3, "reply without a rank": 3}


def msg(role, text, replies=(), **kw):
    return {"message_id": text[:8], "role": role, "text": text, "lang": "en", "deleted": False,
            "review_result": True, "synthetic": False, "replies": list(replies), **kw}


def hand_tree():
    """Root question with 4 replies: a deleted one (rank 0), a German one (rank 1), ranks 2 and 3;
    the rank-2 reply has a follow-up question with a single ranked reply and a review-failed one."""
    follow = msg("prompter", "And why?", [msg("assistant", "Because.", rank=0),
                                         msg("assistant", "Flagged reply", rank=1, review_result=False)])
    root = msg("prompter", "Question?", [
        msg("assistant", "deleted best", rank=0, deleted=True),
        msg("assistant", "Deutsche Antwort", rank=1, lang="de"),
        msg("assistant", "Answer two", [follow], rank=2),
        msg("assistant", "Answer three", rank=3)])
    return {"message_tree_id": "t1", "prompt": root}


def test_filters_are_applied_and_counted_per_reason():
    report = TreeReport()
    out = tree_examples(hand_tree(), "hand", 1, TreeOptions(lang="en", skip_review_failed=True), report)
    assert len(out) == 1  # the follow-up keeps 1 ranked reply < min_siblings 2
    e = out[0]
    assert e.responses == ["Answer two", "Answer three"] and e.target == [-2.0, -3.0]
    assert e.prompt == [{"role": "user", "content": "Question?"}]
    assert report.left_out == {"deleted message": 1, "language not en": 1, "review failed": 1,
                               "fewer than 2 ranked replies": 1}


def test_defaults_keep_all_but_deleted():
    out = tree_examples(hand_tree(), "hand", 1)
    assert [e.responses for e in out] == [["Deutsche Antwort", "Answer two", "Answer three"],
                                          ["Because.", "Flagged reply"]]
    assert out[1].prompt[-1] == {"role": "user", "content": "And why?"} and len(out[1].prompt) == 3


def test_min_siblings_three():
    out = tree_examples(hand_tree(), "hand", 1, TreeOptions(min_siblings=3))
    assert [len(e.responses) for e in out] == [3]


def test_bad_message_names_file_row_and_path(tmp_path):
    tree = hand_tree()
    tree["prompt"]["replies"][2]["replies"][0]["replies"][0]["text"] = "  "
    path = tmp_path / "trees.jsonl"
    path.write_text(json.dumps(tree) + "\n")
    with pytest.raises(DataError, match=r"trees.jsonl, row 1, field 'prompt.replies\[2\].replies\[0\].replies\[0\].text'"):
        load_examples(path)


def test_deleted_message_may_have_no_text():
    tree = hand_tree()
    tree["prompt"]["replies"][0]["text"] = ""
    assert len(tree_examples(tree, "hand", 1)) == 2


@pytest.mark.skipif(not (SHARED / "oasst_en100_trees.jsonl.gz").exists(), reason="shared data not present")
def test_full_file_matches_the_normalized_view():
    trees, report = load_examples(SHARED / "oasst_en100_trees.jsonl.gz")
    ranked, _ = load_examples(SHARED / "oasst_en100_ranked.jsonl.gz")
    assert len(trees) == len(ranked) == 212
    assert all(a.prompt == b.prompt and a.responses == b.responses and a.target == b.target
               for a, b in zip(trees, ranked))
    assert report.left_out == {"reply without a rank": 46}
