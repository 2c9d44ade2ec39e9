"""One TRL DPOTrainer run for benchmarks/vs_trl.py, executed by the python of a venv that has TRL.

Never imported by prefalign or its tests (TRL is not a dependency); vs_trl.py starts it as a child:

    TRL_PY benchmarks/trl_dpo_run.py --model DIR --train FILE --steps 30 --batch-size 8 --out RESULT.json

The pairs are taken in file order (vs_trl.py writes the file in prefalign's batch order, so both
trainers see the same batches). Settings: sigmoid DPO, separate frozen reference model, fp32, no
gradient checkpointing, AdamW (TRL's default), linear decay without warm-up, grad clip 1.0, no
evaluation, no saving. The JSON holds the training loop's wall time (on_train_begin ->
on_train_end), the real (non-pad) and padded tokens of the batches it trained on, and the loss
and grad norm of every step (the step-1 check compares them with prefalign's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    datasets.disable_caching()
    transformers.logging.set_verbosity_error()
    with open(args.train, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[: args.steps * args.batch_size]
    if len(rows) < args.steps * args.batch_size:
        sys.exit(f"{args.train}: {len(rows)} pairs, {args.steps * args.batch_size} needed (one epoch)")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    out_dir = tempfile.mkdtemp(prefix="trl-run-")
    config = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=args.steps, max_length=args.max_length, loss_type=["sigmoid"], beta=args.beta,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, precompute_ref_log_probs=False,
        train_sampling_strategy="sequential", use_cpu=True, seed=args.seed, report_to="none", logging_steps=1,
        save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, ref_model=reference, args=config,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)

    # count the tokens of the batches TRL really trains on (collation stays inside the timed loop)
    counts = {"real": 0, "padded": 0, "batches": 0}
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        if counts["batches"] < args.steps:
            counts["real"] += int(batch["attention_mask"].sum())
            counts["padded"] += batch["input_ids"].numel()
            counts["batches"] += 1
        return batch

    trainer.data_collator = counting_collator

    class Clock(TrainerCallback):
        begin = end = None
        steps: list = []

        def on_train_begin(self, *a, **kw):
            Clock.begin = time.perf_counter()

        def on_step_end(self, *a, **kw):
            Clock.steps.append(time.perf_counter())

        def on_train_end(self, *a, **kw):
            Clock.end = time.perf_counter()

    trainer.add_callback(Clock())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    edges = [Clock.begin] + Clock.steps
    result = {
        "trainer": "trl", "trl": trl.__version__, "transformers": transformers.__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": trainer.state.global_step,
        "loop_s": Clock.end - Clock.begin, "step_s": [b - a for a, b in zip(edges, edges[1:])],
        "tokens": counts["real"], "padded_tokens": counts["padded"],
        "losses": [h["loss"] for h in logs], "grad_norms": [h["grad_norm"] for h in logs],
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
