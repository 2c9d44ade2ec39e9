"""SmolLM2-135M-Instruct aligned with LoRA on real preference data, judged against the untouched model
by a reward model trained on a disjoint split (the README's "A real model, judged").

    python scripts/smollm2_study.py --work-dir runs/smollm2-study            # ~25 min on 2 cores
    python scripts/smollm2_study.py --work-dir runs/smollm2-study --objectives dpo,ipo,simpo --steps 80

Steps (each an ordinary prefalign command, printed before it runs; rerunning the script continues):
1. UltraFeedback (binarized sample, ../shared/data) is cut in two by row parity: even rows train
   the judge, odd rows train the policies. No prompt is in both halves.
2. `prefalign train-rm`: a Bradley-Terry reward model on all-MiniLM-L6-v2, trained on the even rows.
3. `prefalign sweep`: SmolLM2-135M-Instruct + LoRA per objective on the odd rows, then each cell and the
   untouched model sample the same held-out prompts (odd half, never trained on) with the same seed;
   the reward model scores them: win rate against the untouched model with a bootstrap interval,
   score and length change, sampled KL, sample pairs (OUTPUT/sweep/report.md).
The gold VADER reward is not used: UltraFeedback's tasks are not a sentiment task.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ultrafeedback_binarized_sample.jsonl.gz"


def split_by_parity(source: Path, out: Path) -> tuple[Path, Path]:
    """(judge half: even rows, policy half: odd rows) as JSONL files; rows are copied unchanged."""
    out.mkdir(parents=True, exist_ok=True)
    judge, policy = out / "judge_half.jsonl", out / "policy_half.jsonl"
    if judge.is_file() and policy.is_file():
        return judge, policy
    with gzip.open(source, "rt", encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    prompts = [json.dumps(json.loads(r).get("prompt")) for r in rows]
    if set(prompts[0::2]) & set(prompts[1::2]):
        raise ValueError(f"{source}: a prompt occurs in both halves; the split would not be disjoint")
    for path, part in ((judge, rows[0::2]), (policy, rows[1::2])):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(part), encoding="utf-8")
        tmp.replace(path)
    return judge, policy


def run(args: list[str]) -> None:
    print("+ prefalign " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "prefalign.cli", *args], check=True, cwd=REPO)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", default=str(REPO / "runs" / "smollm2-study"))
    ap.add_argument("--data", default=str(DATA), help="UltraFeedback binarized rows (JSONL or .jsonl.gz)")
    ap.add_argument("--objectives", default="dpo,ipo")
    ap.add_argument("--steps", type=int, default=40, help="LoRA optimizer steps per objective (batch 8)")
    ap.add_argument("--learning-rate", type=float, default=3e-4, help="LoRA learning rate")
    ap.add_argument("--rm-steps", type=int, default=60)
    ap.add_argument("--eval-prompts", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2, help="cells trained at once")
    a = ap.parse_args()
    from prefalign.models.encoders import minilm_path
    from prefalign.recipes.quickstart import smollm2_folder

    work = Path(a.work_dir).resolve()
    judge_half, policy_half = split_by_parity(Path(a.data), work / "data")
    rm_dir = work / "rm"
    if not (rm_dir / "final").is_dir():
        run(["train-rm", f"backbone={minilm_path()}", "kind=bt", f"data.train={judge_half}", "data.eval_fraction=0.1",
             f"max_steps={a.rm_steps}", "batch_size=16", "learning_rate=6e-5", "max_length=256",
             f"output_dir={rm_dir}", "progress=false", "resume=true"])
    run(["sweep", f"model={smollm2_folder()}", f"data.train={policy_half}", "data.eval_fraction=0.1",
         "data.on_bad_row=skip", "lora=true", "lora_r=16", "lora_alpha=32", f"max_steps={a.steps}", "batch_size=8",
         f"learning_rate={a.learning_rate}", "warmup_ratio=0.1", "max_length=256", "max_prompt_length=128", "eval_batch_size=16",
         "progress=false", f"output_dir={work / 'sweep'}", "sweep.judge=reward_model",
         f"sweep.judge_args={{path: {rm_dir / 'final'}}}", f"sweep.eval_prompts={a.eval_prompts}",
         "sweep.max_new_tokens=64", "--workers", str(a.workers), "--grid", f"objective={a.objectives}"])  # each objective its default beta
    print(f"report: {work / 'sweep' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
