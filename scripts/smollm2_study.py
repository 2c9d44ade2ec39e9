"""SmolLM2-135M-Instruct aligned with LoRA on real preference data, judged against the untouched model
by a reward model trained on a disjoint split (the README's "A real model, judged").

    python scripts/smollm2_study.py --work-dir runs/smollm2-study            # about an hour on 2 cores
    python scripts/smollm2_study.py --work-dir runs/smollm2-study --objectives dpo,ipo,simpo --steps 80

Steps (each an ordinary prefalign command, printed before it runs; rerunning the script continues):
1. HH-RLHF helpful (base, online and rejection-sampled test files, ../shared/data; 6,240 pairs) become
   message-list pairs (each dialogue's turns as chat messages, so SmolLM2 sees its own chat template) and
   are cut in two by a hash of the prompt: one half trains the judge, the other the policies. No
   conversation is in both halves (a prompt that occurs twice goes to one side with all its copies).
   `--data` also takes UltraFeedback-style rows.
2. `prefalign train-rm`: a Bradley-Terry reward model on all-MiniLM-L6-v2, trained on the judge half;
   its held-out accuracy is printed (and is in OUTPUT/rm/summary.json), since a win rate is only as
   good as the judge that counts it.
3. `prefalign sweep`: SmolLM2-135M-Instruct + LoRA per objective on the policy half less 170 held-out
   prompts (the first in hash order: data.eval), then each cell and the untouched model sample 160 of
   those prompts with the same seed; the reward model scores them: win rate against the untouched
   model with a bootstrap interval, score and length change, sampled KL, sample pairs
   (OUTPUT/sweep/report.md).
The gold VADER reward is not used: helpfulness is not a sentiment task.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
DATA = [DATA_DIR / f"hh_rlhf_helpful_{part}_test.jsonl.gz" for part in ("base", "online", "rejection_sampled")]


def as_message_pair(row: dict, source: Path, row_no: int) -> dict:
    """An HH transcript pair as {prompt: messages, chosen, rejected}; rows with a prompt pass unchanged."""
    from prefalign.data.records import split_hh_dialogue
    from prefalign.recipes.quickstart import hh_to_messages

    if "prompt" in row:
        return row
    prompt, chosen, rejected = split_hh_dialogue(row["chosen"], row["rejected"], str(source), row_no)
    return {"prompt": hh_to_messages(prompt), "chosen": chosen.strip(), "rejected": rejected.strip()}


def judge_side(prompt) -> bool:
    """True for the judge's half: a stable hash of the prompt, so repeats of a prompt share a side."""
    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).digest()
    return digest[0] % 2 == 0


def split_by_prompt(sources: list[Path], out: Path) -> tuple[Path, Path]:
    """(judge half, policy half) as JSONL files of message-list pairs, disjoint in prompts."""
    out.mkdir(parents=True, exist_ok=True)
    judge, policy = out / "judge_half.jsonl", out / "policy_half.jsonl"
    if judge.is_file() and policy.is_file():
        return judge, policy
    halves: dict[bool, list[str]] = {True: [], False: []}
    for source in sources:
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rt", encoding="utf-8") as f:
            for row_no, line in enumerate(f, start=1):
                if line.strip():
                    pair = as_message_pair(json.loads(line), source, row_no)
                    halves[judge_side(pair["prompt"])].append(json.dumps(pair, ensure_ascii=False) + "\n")
    for path, part in ((judge, halves[True]), (policy, halves[False])):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(part), encoding="utf-8")
        tmp.replace(path)
    return judge, policy


def hold_out(policy_half: Path, n_prompts: int) -> tuple[Path, Path]:
    """(training rows, held-out rows) of the policy half: the held-out rows are those of the n_prompts
    prompts first in hash order (a fixed, content-based choice), so no held-out prompt is trained on."""
    train, held = policy_half.with_name("policy_train.jsonl"), policy_half.with_name("policy_eval.jsonl")
    if train.is_file() and held.is_file():
        return train, held
    lines = [line for line in policy_half.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    key = lambda line: hashlib.sha256(json.dumps(json.loads(line)["prompt"], sort_keys=True).encode()).hexdigest()  # noqa: E731
    chosen = set(sorted({key(line) for line in lines})[:n_prompts])
    for path, part in ((held, [x for x in lines if key(x) in chosen]), (train, [x for x in lines if key(x) not in chosen])):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(part), encoding="utf-8")
        tmp.replace(path)
    return train, held


def run(args: list[str]) -> None:
    print("+ prefalign " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "prefalign.cli", *args], check=True, cwd=REPO)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", default=str(REPO / "runs" / "smollm2-study"))
    ap.add_argument("--data", nargs="+", default=[str(p) for p in DATA],
                    help="preference files (HH-RLHF transcripts or rows with a prompt; JSONL or .jsonl.gz)")
    ap.add_argument("--objectives", default="dpo,ipo")
    ap.add_argument("--steps", type=int, default=40, help="LoRA optimizer steps per objective (batch 8)")
    ap.add_argument("--learning-rate", type=float, default=3e-4, help="LoRA learning rate")
    ap.add_argument("--rm-steps", type=int, default=150, help="reward-model steps of 16 pairs (~8 s each on 2 cores)")
    ap.add_argument("--eval-prompts", type=int, default=160, help="held-out prompts sampled and judged per model")
    ap.add_argument("--workers", type=int, default=2, help="cells trained at once")
    ap.add_argument("--save-steps", type=int, default=0,
                    help="checkpoint each cell every N steps, so that a stopped study resumes mid-cell (0: never)")
    a = ap.parse_args()
    from prefalign.models.encoders import minilm_path
    from prefalign.recipes.quickstart import smollm2_folder

    work = Path(a.work_dir).resolve()
    judge_half, policy_half = split_by_prompt([Path(p) for p in a.data], work / "data")
    # 10 spare prompts: a held-out row that fails validation is skipped, and the sweep takes the first N
    policy_train, policy_eval = hold_out(policy_half, a.eval_prompts + 10)
    rm_dir = work / "rm"
    if not (rm_dir / "final").is_dir():
        run(["train-rm", f"backbone={minilm_path()}", "kind=bt", f"data.train={judge_half}", "data.eval_fraction=0.05",
             "data.on_bad_row=skip", f"max_steps={a.rm_steps}", "batch_size=16", "learning_rate=1e-4", "max_length=192",
             f"output_dir={rm_dir}", "progress=false", "resume=true"])
    rm = json.loads((rm_dir / "summary.json").read_text())
    acc = {when: rm[f"eval_{when}"]["eval/rewards/accuracy"] for when in ("start", "end")}
    print(f"judge: held-out accuracy {acc['start']:.3f} -> {acc['end']:.3f} on {rm['data']['eval_examples']} pairs "
          "(a win rate below is only as good as this)", flush=True)
    run(["sweep", f"model={smollm2_folder()}", f"data.train={policy_train}", f"data.eval={policy_eval}",
         "data.on_bad_row=skip", "lora=true", "lora_r=16", "lora_alpha=32", f"max_steps={a.steps}", "batch_size=8",
         f"learning_rate={a.learning_rate}", "warmup_ratio=0.1", "max_length=256", "max_prompt_length=128", "eval_batch_size=16",
         "progress=false", f"output_dir={work / 'sweep'}", "sweep.judge=reward_model",
         f"sweep.judge_args={{path: {rm_dir / 'final'}}}", f"sweep.eval_prompts={a.eval_prompts}",
         "sweep.max_new_tokens=64", f"save_steps={a.save_steps}", "--workers", str(a.workers), "--grid", f"objective={a.objectives}"])  # each objective its default beta
    print(f"report: {work / 'sweep' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
