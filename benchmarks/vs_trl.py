"""prefalign side by side with TRL's DPOTrainer and the bare-PyTorch floor, on identical work.

    python benchmarks/vs_trl.py --trl-python /path/to/trl-venv/bin/python              # both workloads
    python benchmarks/vs_trl.py --trl-python ... --workloads fixture --rounds 3
    python benchmarks/vs_trl.py --trl-python ... --workloads smollm2 --rounds 2 --smollm2 /path/to/SmolLM2-135M-Instruct
    python benchmarks/vs_trl.py --trl-python ... --steps 2 --rounds 1     # smoke run (numbers not meaningful)

TRL is never imported here: it runs in its own venv (--trl-python) through trl_dpo_run.py; the
floor (dpo_floor.py) and `prefalign train` run with this python.

Workloads
    fixture: a LlamaForCausalLM built from a config (hidden 256, 4 layers, 8 heads, intermediate
      688, vocabulary 8000, seed 0, 7.3M parameters) with a byte-level BPE tokenizer (8000, EOS
      "<|endoftext|>", PAD "<|pad|>", no BOS) trained on the HH-RLHF harmless-base test dialogues;
      30 steps of 8 pairs (one epoch of 240 pairs).
    smollm2: SmolLM2-135M-Instruct from a local folder; 8 steps of 4 pairs.
    Pairs: the first usable HH-RLHF harmless-base test rows (prompt = the dialogue up to the last
    "Assistant:", the two replies), prompts left-truncated to 128 tokens of the workload's
    tokenizer beforehand, because TRL 1.16 has no max_prompt_length. Everyone: max_length 256
    (prompt + response cut from the end), sigmoid DPO, beta 0.1, lr 1e-4 AdamW, linear decay
    without warm-up, grad clip 1.0, fp32, separate frozen reference model, 2 threads.

Same batches
    prefalign draws a seeded random order (data.collate.epoch_batches); TRL and the floor read
    their file in order, so their file is written in prefalign's order: all three train on the
    same pairs in the same steps.

Timing
    Every run is a whole process of its own; a round runs each trainer once, in an order that
    rotates from round to round (interleaved), so drift on a shared machine hits all of them.
    Per run: the process's wall time and peak RSS (os.wait4), and real (non-pad) tokens per second
    of the training loop alone (prefalign: its per-step metrics; TRL: a callback on_train_begin ->
    on_train_end; floor: around its loop). Ratios are taken round by round, then the median.
    prefalign's process also evaluates 8 held-out pairs before and after training and saves the
    final model; TRL's and the floor's do neither.

Step-1 check
    Policy = reference at step 1, so each DPO loss is ln 2: the losses must agree within 1e-4.
    The grad norm at step 1 and the loss at step 2 depend on the tokens, the batch and the update:
    they must agree within 0.1% (relative). fp32 sums over ~10^4 tokens in different orders differ
    by far less (about 1e-6 measured); one token scored differently in a batch moves the grad norm
    by more, so the check catches a mismatch in the work rather than in rounding.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
HH = REPO / "src" / "prefalign" / "assets" / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"
ASSISTANT = "\n\nAssistant:"
FIXTURE_MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                     intermediate_size=688, vocab_size=8000, max_position_embeddings=512)
WORK = {"fixture": dict(steps=30, batch=8), "smollm2": dict(steps=8, batch=4)}
EVAL_PAIRS, MAX_LENGTH, PROMPT_TOKENS = 8, 256, 128
LOSS1_TOL, REL_TOL = 1e-4, 1e-3
TRAINERS = ("trl", "prefalign", "floor_padded", "floor_packed")


def hh_pairs() -> list[dict]:
    """HH dialogues as {"prompt", "chosen", "rejected"} (file order), dropping rows with an empty
    or identical reply or prompts that differ between the two dialogues."""
    out = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            cut = row["chosen"].rfind(ASSISTANT) + len(ASSISTANT)
            prompt, chosen = row["chosen"][:cut], row["chosen"][cut:]
            if cut < len(ASSISTANT) or not row["rejected"].startswith(prompt):
                continue
            rejected = row["rejected"][cut:]
            if chosen.strip() and rejected.strip() and chosen != rejected:
                out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def build_fixture_model(folder: Path, pairs: list[dict]) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([p["prompt"] + p[k] for p in pairs for k in ("chosen", "rejected")],
                            trainers.BpeTrainer(vocab_size=FIXTURE_MODEL["vocab_size"],
                                                special_tokens=["<|endoftext|>", "<|pad|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(**FIXTURE_MODEL, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)


def prepare(workload: str, model: Path, work: Path) -> dict:
    """The workload's files: prefalign's train/eval files (HH order) and the same pairs in
    prefalign's batch order for TRL and the floor."""
    from transformers import AutoTokenizer

    from prefalign.data.collate import epoch_batches

    steps, batch = WORK[workload]["steps"], WORK[workload]["batch"]
    pairs = hh_pairs()
    if workload == "fixture" and not (model / "model.safetensors").exists():
        model.mkdir(parents=True, exist_ok=True)
        build_fixture_model(model, pairs)
    tokenizer = AutoTokenizer.from_pretrained(model)
    n_train = steps * batch
    chosen = pairs[: n_train + EVAL_PAIRS]
    for p in chosen:  # TRL has no max_prompt_length: everyone gets the already-truncated text
        ids = tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]
        if len(ids) > PROMPT_TOKENS:
            p["prompt"] = tokenizer.decode(ids[-PROMPT_TOKENS:])
    train, held_out = chosen[:n_train], chosen[n_train:]
    order = [i for b in epoch_batches(n_train, batch, 42, 0) for i in b]
    files = {"train": work / "train.jsonl", "eval": work / "eval.jsonl", "ordered": work / "train_ordered.jsonl"}
    for name, rows in (("train", train), ("eval", held_out), ("ordered", [train[i] for i in order])):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {"model": str(model), "data": {"train": str(files["train"]), "eval": str(files["eval"])},
              "objective": "dpo", "beta": 0.1, "max_steps": steps, "batch_size": batch, "learning_rate": 1e-4,
              "max_length": MAX_LENGTH, "max_prompt_length": MAX_LENGTH - 1, "warmup_ratio": 0.0,
              "lr_scheduler": "linear", "seed": 42, "logging_steps": 1, "progress": False,
              "reference": "frozen", "overwrite": True}
    # not prefalign.json: that name is the prefalign run's result file, which each run deletes first
    (work / "prefalign_config.json").write_text(json.dumps(config))
    return {"model": str(model), **{k: str(v) for k, v in files.items()}, "steps": steps, "batch": batch}


def command(trainer: str, spec: dict, work: Path, trl_python: str) -> tuple[list[str], Path]:
    out = work / f"{trainer}.json"
    common = ["--model", spec["model"], "--train", spec["ordered"], "--steps", str(spec["steps"]),
              "--batch-size", str(spec["batch"]), "--max-length", str(MAX_LENGTH), "--out", str(out)]
    if trainer == "trl":
        return [trl_python, str(HERE / "trl_dpo_run.py"), *common], out
    if trainer.startswith("floor_"):
        return [sys.executable, str(HERE / "dpo_floor.py"), *common, "--layout", trainer[6:]], out
    yaml = work / "prefalign.yaml"  # JSON is YAML
    yaml.write_text((work / "prefalign_config.json").read_text())
    return [sys.executable, "-m", "prefalign.cli", "train", str(yaml), f"output_dir={work / 'run'}"], out


def run_one(trainer: str, spec: dict, work: Path, trl_python: str) -> dict:
    """Start one whole process; its wall time and peak RSS, and the loop figures it reports."""
    cmd, out = command(trainer, spec, work, trl_python)
    out.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO / "src"))
    log_file = work / f"{trainer}.log"
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} failed ({proc.returncode}); log: {log_file}\n"
                           + log_file.read_text()[-3000:])
    figures = prefalign_figures(work / "run") if trainer == "prefalign" else json.loads(out.read_text())
    return {"trainer": trainer, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "loop_tokens_per_s": figures["tokens"] / figures["loop_s"], **figures}


def prefalign_figures(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "step_time_s" in r]
    return {"loop_s": sum(r["step_time_s"] for r in steps), "step_s": [r["step_time_s"] for r in steps],
            "tokens": sum(r["tokens"] for r in steps), "padded_tokens": sum(r["padded_tokens"] for r in steps),
            "losses": [r["loss"] for r in steps], "grad_norms": [r["grad_norm"] for r in steps],
            "steps": len(steps)}


def step1_check(trl: dict, pf: dict) -> dict:
    rel = lambda a, b: abs(a - b) / max(abs(a), abs(b), 1e-12)  # noqa: E731
    out = {"loss1": (trl["losses"][0], pf["losses"][0]), "grad_norm1": (trl["grad_norms"][0], pf["grad_norms"][0])}
    ok = abs(trl["losses"][0] - pf["losses"][0]) <= LOSS1_TOL and abs(pf["losses"][0] - math.log(2)) <= LOSS1_TOL
    ok = ok and rel(*out["grad_norm1"]) <= REL_TOL
    if len(trl["losses"]) > 1 and len(pf["losses"]) > 1:
        out["loss2"] = (trl["losses"][1], pf["losses"][1])
        ok = ok and rel(*out["loss2"]) <= REL_TOL
    return {**out, "agree": ok}


def summarize(workload: str, rounds: list[dict], trainers: list[str]) -> str:
    """Markdown: each round's figures and ratios, then the medians."""
    lines = [f"### {workload}", "", "| round | trainer | wall s | loop real tok/s | peak RSS MiB | padding % |",
             "|---|---|---|---|---|---|"]
    for i, rnd in enumerate(rounds, 1):
        for t in trainers:
            r = rnd[t]
            pad = 100 * (1 - r["tokens"] / r["padded_tokens"])
            lines.append(f"| {i} | {t} | {r['wall_s']:.1f} | {r['loop_tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} "
                         f"| {pad:.0f} |")
    ratios = {}
    if "trl" in trainers and "prefalign" in trainers:
        ratios["TRL wall / prefalign wall"] = [r["trl"]["wall_s"] / r["prefalign"]["wall_s"] for r in rounds]
        ratios["prefalign loop tok/s / TRL's"] = [r["prefalign"]["loop_tokens_per_s"] / r["trl"]["loop_tokens_per_s"]
                                                  for r in rounds]
        ratios["prefalign peak RSS / TRL's"] = [r["prefalign"]["peak_rss_mib"] / r["trl"]["peak_rss_mib"]
                                                for r in rounds]
    for floor in ("floor_padded", "floor_packed"):
        if floor in trainers and "prefalign" in trainers:
            ratios[f"prefalign loop s / {floor} loop s"] = [r["prefalign"]["loop_s"] / r[floor]["loop_s"]
                                                            for r in rounds]
            ratios[f"prefalign wall / {floor} wall"] = [r["prefalign"]["wall_s"] / r[floor]["wall_s"] for r in rounds]
    lines += ["", "| ratio | per round | median |", "|---|---|---|"]
    for name, values in ratios.items():
        lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
    checks = [r["step1"] for r in rounds if "step1" in r]
    if checks:
        c = checks[0]
        lines += ["", f"Step-1 check (TRL vs prefalign): loss {c['loss1'][0]:.6f} vs {c['loss1'][1]:.6f}, grad norm "
                      f"{c['grad_norm1'][0]:.5f} vs {c['grad_norm1'][1]:.5f}"
                  + (f", step-2 loss {c['loss2'][0]:.6f} vs {c['loss2'][1]:.6f}" if "loss2" in c else "")
                  + f": {'agree' if all(x['agree'] for x in checks) else 'DISAGREE'} (loss within {LOSS1_TOL}, "
                    f"grad norm and step-2 loss within {REL_TOL:.0%})"]
    if "floor_packed" in trainers:
        lines.append(f"Packed floor vs padded log-probs, max abs diff: "
                     f"{max(r['floor_packed']['max_abs_diff_logp'] for r in rounds):.2e}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-python", help="python of a venv with trl installed (omit: run without TRL)")
    ap.add_argument("--workloads", default="fixture,smollm2")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each trainer once per round)")
    ap.add_argument("--trainers", default=",".join(TRAINERS))
    ap.add_argument("--steps", type=int, default=None, help="override the workloads' steps (smoke runs)")
    ap.add_argument("--smollm2", default=str(Path.home() / ".cache" / "prefalign" / "smollm2-135m-instruct"))
    ap.add_argument("--work-dir", default=str(REPO / ".bench" / "vs_trl"))
    args = ap.parse_args(argv)
    trainers = [t for t in args.trainers.split(",") if t != "trl" or args.trl_python]
    results = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "workloads": {}}
    report = []
    for workload in args.workloads.split(","):
        work = Path(args.work_dir).resolve() / workload
        work.mkdir(parents=True, exist_ok=True)
        if args.steps:
            WORK[workload]["steps"] = args.steps
        model = work / "model" if workload == "fixture" else Path(args.smollm2)
        spec = prepare(workload, model, work)
        rounds = []
        for i in range(args.rounds):
            order = trainers[i % len(trainers):] + trainers[: i % len(trainers)]
            rnd = {}
            for t in order:
                rnd[t] = run_one(t, spec, work, args.trl_python)
                print(f"{workload} round {i + 1} {t}: wall {rnd[t]['wall_s']:.1f} s, loop "
                      f"{rnd[t]['loop_tokens_per_s']:.0f} tok/s, peak RSS {rnd[t]['peak_rss_mib']:.0f} MiB, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            if "trl" in rnd and "prefalign" in rnd:
                rnd["step1"] = step1_check(rnd["trl"], rnd["prefalign"])
            rounds.append(rnd)
        results["workloads"][workload] = {"spec": spec, "rounds": rounds}
        report.append(summarize(workload, rounds, trainers))
        shutil.rmtree(work / "run", ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.work_dir, "results.json").write_text(json.dumps(results, indent=1))
    Path(args.work_dir, "results.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0 if all(r.get("step1", {"agree": True})["agree"] for w in results["workloads"].values()
                    for r in w["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
