"""`prefalign online` killed with SIGKILL mid-sampling, mid-labeling and mid-training, then resumed,
ends bitwise equal to an uninterrupted run (weights, samples, examples, evaluations) and never asks
the judge the same question twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import yaml
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent('''
    """Runs `prefalign online`, SIGKILLing itself at the n-th call of one phase (mode, n in argv)."""
    import os, signal, sys
    from pathlib import Path

    MODE, N, CALLS = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    seen = {"n": 0}

    def tick(mode):
        if MODE == mode:
            seen["n"] += 1
            if seen["n"] >= N:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: what a crash or OOM-kill leaves

    def judge_fn(prompt, response):
        # every question that reaches the judge is recorded, across all processes of the run
        with open(CALLS, "a") as f:
            f.write(repr((prompt[-30:], response)) + "\\n")
        tick("label")
        return float(len(response))

    if __name__ == "__main__":
        import online_driver  # the judge is imported by name; count through that module's copy
        from prefalign.cli.main import main
        import prefalign.recipes.online as recipe
        from prefalign.train.trainee import PolicyTrainee

        save, loss = recipe.save_samples, PolicyTrainee.loss

        def save_samples(path, samples):
            online_driver.tick("sample")
            return save(path, samples)

        def counted_loss(self, batch):
            online_driver.tick("train")
            return loss(self, batch)

        recipe.save_samples, PolicyTrainee.loss = save_samples, counted_loss
        online_driver.MODE, online_driver.N = MODE, N
        sys.exit(main(["online", sys.argv[4]] + sys.argv[5:]))
''')


def run_driver(tmp: Path, config: Path, mode: str, n: int, calls: Path, *extra: str) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), str(TESTS)] + sys.path), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(tmp / "online_driver.py"), mode, str(n), str(calls), str(config),
                           *extra], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode not in (0, -9):
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def write_config(tmp: Path, model: Path, data: Path, out: Path) -> Path:
    cfg = {"model": str(model), "data": {"train": str(data)}, "output_dir": str(out), "max_steps": 4,
           "batch_size": 2, "learning_rate": 1e-3, "max_length": 96, "save_steps": 2, "logging_steps": 1,
           "progress": False, "seed": 3,
           "online": {"method": "online_dpo", "rounds": 2, "prompts_per_round": 8, "shard_size": 4,
                      "max_new_tokens": 8, "judge": "callable", "judge_args": {"score_fn": "online_driver:judge_fn"}, "judge_batch_size": 4,
                      "eval_prompts": 4, "bootstrap": 50}}
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def phase_files(run: Path) -> dict[str, bytes]:
    """Every sample, example and evaluation file of the run, by relative path."""
    names = ["samples/*.json", "examples.json", "eval_samples.json"]
    found = {}
    for pattern in names:
        for p in sorted(run.glob(f"rounds/round-*/{pattern}")):
            found[str(p.relative_to(run))] = p.read_bytes()
    for p in ("rounds/initial_samples.json",):
        found[p] = (run / p).read_bytes()
    return found


def eval_values(run: Path) -> list:
    out = []
    for p in sorted(run.glob("rounds/round-*/eval.json")):
        value = json.loads(p.read_text())
        out.append({k: v for k, v in value.items() if k not in ("seconds", "tokens_per_s", "tokens")})
    return out


def test_killed_and_resumed_run_is_bitwise_equal_and_asks_no_question_twice(tiny_model_dir, tmp_path):
    (tmp_path / "online_driver.py").write_text(DRIVER)
    data = TESTS / "fixtures" / "hh_harmless_64.jsonl"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    calls_a, calls_b = tmp_path / "calls_a.txt", tmp_path / "calls_b.txt"
    assert run_driver(tmp_path, write_config(tmp_path, tiny_model_dir, data, straight), "none", 0, calls_a) == 0

    cfg_b = write_config(tmp_path, tiny_model_dir, data, killed)
    # round 0: killed after its first sample shard is written (the second shard is missing)
    assert run_driver(tmp_path, cfg_b, "sample", 2, calls_b) == -9
    assert len(list(killed.glob("rounds/round-0/samples/*.json"))) == 1
    # resumed, then killed in round 0's labeling on the 10th question the score function gets: a call of 4
    # comparisons asks 8 scores, so the first call's answers are on disk and the second call is in flight
    before = len(calls_b.read_text().splitlines())
    assert run_driver(tmp_path, cfg_b, "label", 10, calls_b, "--resume") == -9
    assert not (killed / "rounds/round-0/examples.json").exists()
    # resumed, then killed in round 1's third step, after its checkpoint-2 (round 0's 4 steps of one
    # micro-batch each ran in this process first)
    assert run_driver(tmp_path, cfg_b, "train", 4 + 3, calls_b, "--resume") == -9
    assert (killed / "rounds/round-1/train/checkpoint-2").is_dir()
    assert not (killed / "rounds/round-1/policy").exists()
    assert run_driver(tmp_path, cfg_b, "none", 0, calls_b, "--resume") == 0

    a, b = load_file(str(straight / "final/model.safetensors")), load_file(str(killed / "final/model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert phase_files(straight) == phase_files(killed)
    assert eval_values(straight) == eval_values(killed)
    # the killed run asked the straight run's questions once each, plus again only the questions of the
    # call the kill interrupted (their answers never came back): that process's 9th and 10th
    asked_a, asked_b = calls_a.read_text().splitlines(), calls_b.read_text().splitlines()
    assert len(asked_a) > 16
    assert Counter(asked_b) - Counter(asked_a) == Counter(asked_b[before + 8:before + 10])
    assert Counter(asked_a) - Counter(asked_b) == Counter()
