import json

import pytest

from prefalign.cli.main import main
from prefalign.cli.judge import parse_judge_args


@pytest.fixture
def candidates(tmp_path):
    path = tmp_path / "candidates.jsonl"
    rows = [{"prompt": "How do I boil an egg?", "responses": ["Boil it for nine minutes.", "No.", "Eggs are oval."]},
            {"prompt": "Name a colour.", "responses": ["Blue.", "Seven."], "id": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_judge_command_scores_and_writes_pairs_and_stats(tiny_model_dir, candidates, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["judge", str(candidates), "--judge", "follow_up", "--judge-arg", f"path={tiny_model_dir}",
                 "--out", str(out), "--no-progress"]) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 2 and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert pairs[1]["id"] == "b" and {pairs[1]["chosen"], pairs[1]["rejected"]} == {"Blue.", "Seven."}
    stats = json.loads((tmp_path / "pairs.stats.json").read_text())
    assert stats["labeling"]["rows"] == 2 and stats["labeling"]["pairs"] == 2 and stats["verdicts"]["verdicts"] == 5
    assert "2 pairs from 2 rows" in capsys.readouterr().out


def test_judge_command_round_robin_for_a_compare_only_judge(tiny_model_dir, candidates, tmp_path):
    out, stats_path = tmp_path / "pairs.jsonl", tmp_path / "s.json"
    assert main(["judge", str(candidates), "--judge", "principle", "--judge-arg", f"path={tiny_model_dir}",
                 "--out", str(out), "--stats", str(stats_path), "--no-progress"]) == 0
    stats = json.loads(stats_path.read_text())
    # 3 + 1 comparisons; each row is either a pair or a counted drop
    assert stats["labeling"]["judgements"] == 4
    assert stats["labeling"]["pairs"] + stats["labeling"]["dropped"] == 2
    assert all(p["mode"] == "compare" for p in map(json.loads, out.read_text().splitlines()))


def test_judge_command_reports_bad_input(tmp_path, candidates, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "responses": "not a list"}) + "\n")
    assert main(["judge", str(bad), "--judge", "relevance", "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "row 1" in capsys.readouterr().err
    assert main(["judge", str(candidates), "--judge", "nope", "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "unknown judge" in capsys.readouterr().err


def test_judge_args_parse_as_yaml_values():
    assert parse_judge_args(["temperature=0.5", "swap=false", "principles=[Be kind., Be exact.]", "path=a/b"]) == {
        "temperature": 0.5, "swap": False, "principles": ["Be kind.", "Be exact."], "path": "a/b"}
    with pytest.raises(ValueError, match="key=value"):
        parse_judge_args(["novalue"])


def test_every_judge_of_issue_4_part_3_is_registered():
    from prefalign.judges import JUDGES

    assert {"rubric", "follow_up", "relevance", "principle", "consensus", "callable"} <= set(JUDGES)
