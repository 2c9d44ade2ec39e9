import json

import pytest

from prefalign.data.records import DataError
from prefalign.judges import CallableJudge
from prefalign.judges.labeling import Candidates, label_pairs, read_candidates


def by_length(prompt, response):
    return None if response == "?" else float(len(response))


def test_score_mode_pairs_best_with_worst_and_counts_dropped_rows():
    rows = [Candidates("q1", ["aa", "aaaa", "a"], id=7), Candidates("q2", ["?", "?", "abc"]),
            Candidates("q3", ["xy", "zw"])]
    judge = CallableJudge(score_fn=by_length)
    pairs, report = label_pairs(judge, rows, batch_size=2, progress=False)
    assert pairs == [{"prompt": "q1", "chosen": "aaaa", "rejected": "a", "chosen_score": 4.0, "rejected_score": 1.0,
                      "judge": "callable", "mode": "score", "id": 7}]
    assert report.as_dict() == {"rows": 3, "pairs": 1, "dropped": 2, "judgements": 8, "dropped_by_reason": {
        "fewer than two scored responses": 1, "all scores tied": 1}}
    assert judge.stats.as_dict()["missing"] == 2


BEATS = {("A", "B"), ("A", "C"), ("A", "D"), ("E", "A"), ("B", "E"), ("C", "E"), ("D", "E"),
         ("B", "C"), ("C", "D"), ("D", "B")}


def beats(prompt, a, b):
    return 1.0 if (a, b) in BEATS else 0.0 if (b, a) in BEATS else 0.5


def test_compare_mode_round_robin_win_rates():
    judge = CallableJudge(compare_fn=beats)
    pairs, report = label_pairs(judge, [Candidates("q", ["C", "A", "B"])], mode="compare", progress=False)
    # A beats both (rate 1), B beats C (1/2), C loses both (0): A over C, decided directly
    assert [(p["chosen"], p["rejected"], p["chosen_score"], p["rejected_score"], p["p_chosen_over_rejected"])
            for p in pairs] == [("A", "C", 1.0, 0.0, 1.0)]
    assert report.judgements == 3


def test_compare_mode_refuses_cycles():
    judge = CallableJudge(compare_fn=beats)
    # rock-paper-scissors among B, C, D: every win rate is 1/2
    _, report = label_pairs(judge, [Candidates("q", ["B", "C", "D"])], mode="compare", progress=False)
    assert report.dropped == {"all win rates tied": 1}
    # A has the best rate (3/4) and E the worst (1/4), yet E beats A: not a trustworthy pair
    _, report = label_pairs(judge, [Candidates("q", list("ABCDE"))], mode="compare", progress=False)
    assert report.dropped == {"intransitive": 1} and report.judgements == 10


def test_compare_only_judge_cannot_be_forced_to_score_and_auto_falls_back():
    pairs, _ = label_pairs(CallableJudge(compare_fn=beats), [Candidates("q", ["B", "A"])], progress=False)
    assert (pairs[0]["chosen"], pairs[0]["mode"]) == ("A", "compare")
    with pytest.raises(NotImplementedError, match="compares pairs only"):
        label_pairs(CallableJudge(compare_fn=beats), [Candidates("q", ["A", "B"])], mode="score", progress=False)


def test_read_candidates_validates_with_file_row_and_field(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps({"prompt": "q", "responses": ["a", {"text": "b"}], "reference": "r"}) + "\n")
    assert read_candidates(good) == [Candidates("q", ["a", "b"], "r")]
    cases = [({"prompt": "q", "responses": ["only one"]}, "responses"),
             ({"prompt": "", "responses": ["a", "b"]}, "prompt"),
             ({"prompt": "q", "responses": ["a", 3]}, "responses[1]"),
             ({"prompt": "q", "responses": ["a", "b"], "reference": 5}, "reference")]
    for row, field in cases:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": "ok", "responses": ["a", "b"]}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError) as err:
            read_candidates(bad)
        assert (err.value.source, err.value.row, err.value.field) == (str(bad), 2, field)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(DataError, match="row 1"):
        read_candidates(broken)
