"""GPM and PAL as registered reward kinds: train-rm through the one loop, eval-rm (per-user
accuracy), the judges on trained folders, and user_id validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefalign.cli.main import main
from prefalign.data.records import DataError
from prefalign.recipes.eval_reward_model import evaluate_pairs, load_eval_pairs
from prefalign.judges import make_judge
from prefalign.rewards.data import load_pairs
from prefalign.rewards.model import load_reward_model
from prefalign.recipes.reward_model import load_reward_config, train_reward_model
from rm_support import tiny_bert_folder
from tests_support import write_jsonl

# rock beats scissors beats paper beats rock: no scalar reward orders all three pairs
CYCLE = [("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")]
# two users with opposite tastes on the same pairs: one scalar reward is right for half of them
TASTES = [("here is a detailed answer", "no"), ("sure, step by step", "cannot help")]


@pytest.fixture
def tiny_bert_dir(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cycle_file(path: Path) -> Path:
    # each word four times: the mean-pooled tiny BERT features then differ enough between responses
    rows = [{"prompt": "pick one", "chosen": " ".join([w] * 4), "rejected": " ".join([l] * 4)} for w, l in CYCLE]
    return write_jsonl(path, rows * 4)


def users_file(path: Path) -> Path:
    rows = []
    for prompt in ("what now?", "help me"):
        for a, b in TASTES:
            rows.append({"prompt": prompt, "chosen": a, "rejected": b, "user_id": "ann"})
            rows.append({"prompt": prompt, "chosen": b, "rejected": a, "user_id": 7})  # integer ids are fine
    return write_jsonl(path, rows)


def config(backbone, data, out, *overrides):
    return load_reward_config(None, [f"backbone={backbone}", f"data.train={data}", f"data.eval={data}",
                                     f"output_dir={out}", "batch_size=4", "learning_rate=1e-2", "max_length=32",
                                     "logging_steps=1", "progress=false", "warmup_ratio=0", "lr_scheduler=constant",
                                     *overrides])


def train_rows(out) -> list[dict]:
    return [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_tiny_bert_vocabulary_is_the_same_in_every_process(tmp_path):
    """The cycle test below trains from one seed; it was seen failing once because the tiny BERT's
    WordPiece vocabulary (tokenizers' trainer: ties broken in hash-map order) changed from one
    test process to the next, and with it every token id and feature. Built in two fresh
    processes, the tokenizer files must be identical."""
    code = ("import hashlib, sys; sys.path[:0] = sys.argv[2:]; from pathlib import Path; "
            "from rm_support import build_tiny_bert; d = build_tiny_bert(Path(sys.argv[1])); "
            "print(hashlib.sha256((d / 'tokenizer.json').read_bytes()).hexdigest())")
    here = Path(__file__).parent
    digests = []
    for i in range(2):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"bert{i}"), str(here), str(here.parent)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.append(out.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]


def test_train_rm_gpm_learns_a_cycle(tiny_bert_dir, tmp_path, one_thread):
    """Deterministic: one thread, seed 42 and a vocabulary fixed across processes (test above).
    At this seed the eval loss falls from 0.698 to 0.009; a few other seeds sit on the ln 2
    plateau for all 60 steps (seed 44 of 38..49), which is why the seed stays fixed."""
    data = cycle_file(tmp_path / "cycle.jsonl")
    summary = train_reward_model(config(tiny_bert_dir, data, tmp_path / "gpm", "kind=gpm", "max_steps=60",
                                        "learning_rate=3e-3", "head_args={k: 2}"))
    start, end = summary["eval_start"], summary["eval_end"]
    # a fresh GPM has eigenvalue 1 and a random unit embedding: loss near ln 2, no reward metrics
    assert end["eval/loss"] < start["eval/loss"] - 0.2
    assert end["eval/rewards/accuracy"] == 1.0  # all three sides of the cycle at once
    assert not any(k.startswith("eval/rewards/chosen") for k in end)
    folder = tmp_path / "gpm" / "final"
    model = load_reward_model(folder)
    assert model.kind.name == "gpm" and model.head.gate
    prompts, a, b = ["pick one"] * 3, [" ".join([w] * 4) for w, _ in CYCLE], [" ".join([l] * 4) for _, l in CYCLE]
    p = model.probabilities(prompts, a, b)
    assert (p > 0.5).all()
    with pytest.raises(ValueError, match="no scalar reward"):
        model.rewards(prompts, a)
    # the judge loads the trained folder and agrees with the model's own probabilities
    judge = make_judge("preference_model", path=str(folder))
    assert judge.compare(prompts, a, b) == pytest.approx(p.tolist(), abs=1e-5)
    # the same run as a scalar BT model: no scalar reward orders more than 2 of the 3 cycle pairs
    bt = train_reward_model(config(tiny_bert_dir, data, tmp_path / "bt", "kind=bt", "max_steps=60",
                                   "learning_rate=3e-3"))
    assert bt["eval_end"]["eval/rewards/accuracy"] <= 2 / 3 + 1e-6
    # eval-rm: accuracy and ECE come from P itself; recompute them from p for the hand check
    examples, subsets, _ = load_eval_pairs(str(data))
    result = evaluate_pairs(model, examples, subsets, progress=False)
    assert result["accuracy"] == 1.0
    # every P > 0.5 and every outcome 1: each bin has accuracy 1, so ECE = sum_b (n_b / N)(1 - mean p_b) = mean(1 - p)
    assert result["ece"] == pytest.approx(float((1 - p.double()).mean()), abs=1e-5)


def test_train_rm_pal_learns_opposed_users_and_eval_reports_each(tiny_bert_dir, tmp_path, one_thread, capsys):
    data = users_file(tmp_path / "users.jsonl")
    # the user weights start uniform and must travel O(1) in logit space: a larger head learning rate
    summary = train_reward_model(config(tiny_bert_dir, data, tmp_path / "pal", "kind=pal", "max_steps=40",
                                        "learning_rate=1e-3", "head_learning_rate=0.05", "head_args={dim: 4}"))
    start, end = summary["eval_start"], summary["eval_end"]
    assert start["eval/rewards/accuracy"] <= 0.75 and end["eval/rewards/accuracy"] == 1.0
    assert end["eval/loss"] < start["eval/loss"]
    folder = tmp_path / "pal" / "final"
    saved = json.loads((folder / "reward_model.json").read_text())
    assert saved["kind"] == "pal" and saved["head"]["users"] == ["7", "ann"] and saved["head"]["n_users"] == 2
    assert main(["eval-rm", str(folder), str(data), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["accuracy"] == 1.0 and result["users"] == {"7": {"pairs": 4, "accuracy": 1.0},
                                                             "ann": {"pairs": 4, "accuracy": 1.0}}
    assert "user ann" in printed and "| ann | 4 |" in (tmp_path / "eval" / "eval.md").read_text()
    # the pal judge loads the trained folder: each user prefers their own side
    ann, seven = make_judge("pal", path=str(folder), user="ann"), make_judge("pal", path=str(folder), user="7")
    prompts, a, b = ["help me"] * 2, [x for x, _ in TASTES], [y for _, y in TASTES]
    assert all(p > 0.5 for p in ann.compare(prompts, a, b)) and all(p < 0.5 for p in seven.compare(prompts, a, b))
    model = load_reward_model(folder)
    assert ann.compare(prompts, a, b) == pytest.approx(model.probabilities(prompts, a, b, users=["ann"] * 2).tolist(),
                                                       abs=1e-5)


def test_per_user_accuracy_on_a_hand_case():
    """P(chosen > rejected) = 0.9, 0.4, 0.8, 0.3 for users u, u, v, v: u gets 1/2, v gets 1/2,
    overall (1 + 0 + 1 + 0) / 4 = 1/2; with P = 0.9, 0.6, 0.2, 0.3 u gets 1, v gets 0."""

    class Fixed:
        def __init__(self, p):
            self.p = list(p)

        def probabilities(self, prompts, a, b, direction=None, batch_size=16):
            out, self.p = self.p[:len(a)], self.p[len(a):]
            return torch.tensor(out, dtype=torch.float64)

    examples = [type("E", (), {"prompt": "p", "responses": ["a", "b"], "extra": {"user": u}})() for u in "uuvv"]
    result = evaluate_pairs(Fixed([0.9, 0.4, 0.8, 0.3]), examples, ["all"] * 4, progress=False)
    assert result["accuracy"] == 0.5 and result["users"] == {"u": {"pairs": 2, "accuracy": 0.5},
                                                             "v": {"pairs": 2, "accuracy": 0.5}}
    result = evaluate_pairs(Fixed([0.9, 0.6, 0.2, 0.3]), examples, ["all"] * 4, progress=False)
    assert result["users"] == {"u": {"pairs": 2, "accuracy": 1.0}, "v": {"pairs": 2, "accuracy": 0.0}}


@pytest.mark.parametrize("value, reason", [(None, "is missing"), (True, "must be a string or integer"), ("  ", "is empty"),
                                           ([1], "must be a string or integer"), (1.5, "must be a string or integer")])
def test_user_id_validation_names_file_row_and_field(tmp_path, value, reason):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": "ann"},
            {"prompt": "q", "chosen": "a", "rejected": "b", **({} if value is None else {"user_id": value})}]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    with pytest.raises(DataError, match=rf"u\.jsonl, row 2, field 'user_id': {reason}"):
        load_pairs(str(path), user_field="user_id")
    kept, info = load_pairs(str(path), on_bad_row="skip", user_field="user_id")
    assert [e.user for e in kept] == ["ann"] and info["load"]["skipped"] == 1 and info["load"]["kept"] == 1


def test_pal_refuses_pairs_without_users_or_unknown_users(tiny_bert_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="row 1, field 'user_id': is missing"):
        train_reward_model(config(tiny_bert_dir, data, tmp_path / "run", "kind=pal", "max_steps=1"))
    trained = tmp_path / "pal"
    train_reward_model(config(tiny_bert_dir, users_file(tmp_path / "u.jsonl"), trained, "kind=pal", "max_steps=1"))
    stranger = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": "zed"}])
    assert main(["eval-rm", str(trained / "final"), str(stranger), "--out", str(tmp_path / "e"), "--no-progress"]) == 1
    assert "'zed'" in capsys.readouterr().err
