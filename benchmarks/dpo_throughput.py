"""DPO training throughput of prefalign's real trainer on real HH-RLHF pairs.

This is the measurement later performance changes are judged by. It is a script, not a test:

    python benchmarks/dpo_throughput.py                        # all modes, 30 timed steps each
    python benchmarks/dpo_throughput.py --modes bare,frozen    # prefalign vs a hand-written loop
    python benchmarks/dpo_throughput.py --steps 4 --warmup-steps 1   # a quick smoke run

What runs
    A byte-level BPE tokenizer (vocabulary 8192, trained with `tokenizers` on the HH-RLHF
    helpful-base test text; BOS prepended by the post-processor, EOS = PAD) and a LlamaForCausalLM
    built from a config (hidden 256, intermediate 688, 4 layers, 4 heads, 2 kv heads, max positions
    512, seed 0) are built once and cached in --work-dir. The training data are the first 512 rows
    of the HH-RLHF harmless-base test file shipped with prefalign; rows 513-520 form an 8-row
    evaluation file. The real data hold rows prefalign rejects (an empty chosen reply: row 87, and
    row 5 of the eval file), so data.on_bad_row=skip: 511 pairs train and 7 evaluate; the results
    record the kept and skipped counts.
    Each configuration calls `prefalign.recipes.policy.train` with a TrainConfig: batch 8 pairs, max_length
    256, max_prompt_length 128, learning rate 1e-5 (constant, no warm-up), logging every step, no
    checkpoints, no progress bar, for --warmup-steps + --steps steps.

    Configurations: reference mode `frozen` (DPO; --logps-impl lean and full by default),
    `precomputed` (DPO; reference log-probs computed once into a fresh cache folder inside the work
    dir), and `none` (SimPO, a reference-free objective, stands in for "no reference").

How it is timed (and why this way)
    Each configuration runs in a fresh child process of this script (hidden --one flag), so peak
    RSS (resource.getrusage ru_maxrss, per process and monotonic) belongs to that configuration
    alone. The child prints one JSON line that the parent collects.

    The trainer logs, every step (logging_steps=1), the step's real (non-pad) and padded token
    counts and its wall time (data collation, forward, backward, clipping, optimizer step). Over
    the timed steps (those after --warmup-steps) the script reports ratios of sums, never means
    of per-step rates (steps carry different token counts):

        real tokens/s   = sum(real tokens) / sum(step time)
        padded tokens/s = sum(padded tokens) / sum(step time)
        steps/s         = timed steps / sum(step time)
        median step ms  = median step time (one-off spikes show as a gap between this and
                          1 / steps/s; every step's time is in the JSON)

    Mode `bare` is the baseline: a hand-written PyTorch DPO loop (full logits, log_softmax,
    gather, frozen reference copy, AdamW, clipping) on the same model, tokenized data, batch
    order and padding, timed the same way around each step.

    This uses the trainer's own per-step clock, so model loading, tokenization, the reference
    precompute, evaluation (start and end, on the 7 eval pairs) and the final save are all
    excluded; a stopwatch around train() minus an estimate of setup would include some of them.
    The wall time of the whole train() call is still recorded (train_wall_s) as a sanity check:
    the timed seconds must be a part of it. Real tokens are non-pad tokens (prompt + response);
    padded tokens are rows x padded length, i.e. what the model actually computes over.

    On CUDA the trainer synchronises every step (the finite-loss check and the gradient norm read
    values back), but the optimizer update after the last sync runs asynchronously and is paid at
    the next step's first sync: the first timed step pays for the last warm-up step's update and
    the last timed step's update is paid after the loop, so N timed steps still hold N updates.

    The one-off reference precompute (mode `precomputed`, first run with a cold cache) is timed
    separately by wrapping prefalign.recipes.policy.write_reference_cache in the child; it covers the kept
    training and evaluation pairs (511 + 7). Peak RSS and peak GPU memory
    (torch.cuda.max_memory_allocated) cover the whole child, setup and evaluation included.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_TEXT = REPO.parent / "shared" / "data" / "hh_rlhf_helpful_base_test.jsonl.gz"
HARMLESS = REPO / "src" / "prefalign" / "assets" / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"

VOCAB = 8192
MODEL = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 512, "vocab_size": VOCAB}
MODEL_SEED = 0
TRAIN_ROWS, EVAL_ROWS = 512, 8
BATCH_PAIRS, MAX_LENGTH, MAX_PROMPT_LENGTH, LEARNING_RATE, TRAIN_SEED = 8, 256, 128, 1e-5, 0
RESULT_MARK = "@@DPO_THROUGHPUT@@ "
BUILD_VERSION = 1  # bump when the way the tokenizer or model is built changes


# ---------------------------------------------------------------- assets (built once)

def read_jsonl_gz(path: Path, limit: int | None = None) -> list[str]:
    lines = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\n"))
                if limit is not None and len(lines) >= limit:
                    break
    return lines


def build_tokenizer(folder: Path, text_file: Path):
    """Byte-level BPE on the HH text, BOS prepended by the post-processor, EOS = PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rows = [json.loads(line) for line in read_jsonl_gz(text_file)]
    texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|bos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                       special_tokens=[("<|bos|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}\n\nHuman: {{ m['content'] }}"
        "{% else %}\n\nAssistant: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}\n\nAssistant:{% endif %}")
    if len(fast) > VOCAB:
        raise RuntimeError(f"tokenizer has {len(fast)} tokens, more than the model's vocabulary {VOCAB}")
    fast.save_pretrained(folder)
    return fast


def build_model(folder: Path, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(MODEL_SEED)
    config = LlamaConfig(**MODEL, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)


def prepare_assets(work: Path) -> dict:
    """Tokenizer + model (cached across invocations), and the fixed train/eval pair files."""
    text_file = SHARED_TEXT if SHARED_TEXT.exists() else HARMLESS
    build = {"version": BUILD_VERSION, "tokenizer_text": text_file.name, "vocab": VOCAB, "model": MODEL,
             "seed": MODEL_SEED}
    model_dir, stamp = work / "model", work / "model-build.json"
    stamped = json.loads(stamp.read_text()) if stamp.exists() else None
    if stamped and not SHARED_TEXT.exists() and stamped.get("tokenizer_text") == SHARED_TEXT.name:
        # a model built elsewhere from the shared text (e.g. carried to a GPU machine): reuse it
        text_file = SHARED_TEXT
        build["tokenizer_text"] = SHARED_TEXT.name
    cached = (stamped == build
              and (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists())
    if not cached:
        t0 = time.perf_counter()
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model_dir.mkdir(parents=True)
        build_model(model_dir, build_tokenizer(model_dir, text_file))
        stamp.write_text(json.dumps(build, indent=1))
        log(f"built tokenizer + model in {time.perf_counter() - t0:.1f} s -> {model_dir}")
    rows = read_jsonl_gz(HARMLESS, TRAIN_ROWS + EVAL_ROWS)
    if len(rows) < TRAIN_ROWS + EVAL_ROWS:
        raise RuntimeError(f"{HARMLESS} holds only {len(rows)} rows")
    train_file, eval_file = work / f"hh_harmless_train{TRAIN_ROWS}.jsonl", work / f"hh_harmless_eval{EVAL_ROWS}.jsonl"
    train_file.write_text("\n".join(rows[:TRAIN_ROWS]) + "\n", encoding="utf-8")
    eval_file.write_text("\n".join(rows[TRAIN_ROWS:]) + "\n", encoding="utf-8")
    return {"model": str(model_dir), "train": str(train_file), "eval": str(eval_file),
            "tokenizer_text": str(text_file), "tokenizer_text_fallback": text_file != SHARED_TEXT}


# ---------------------------------------------------------------- one configuration (child process)

def peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def bare_dpo_loop(spec: dict, cfg) -> dict:
    """The baseline: a bare PyTorch DPO loop on the same model, batches and order.

    Full logits, log_softmax over the whole vocabulary, gather, a frozen reference copy, AdamW,
    clipping: what one writes by hand without a library. prefalign should not be slower.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from prefalign.data.collate import collate, epoch_batches
    from prefalign.losses import get_objective
    from prefalign.models.causal_lm import load_model, load_tokenizer
    from prefalign.recipes.policy import load_data

    device = torch.device("cuda" if spec["device"] == "cuda" else "cpu")
    tok = load_tokenizer(cfg.model)
    train_set, _, _ = load_data(cfg, get_objective("dpo"), tok)
    model = load_model(cfg.model, cfg.dtype).to(device).train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    pad_multiple = 64 if device.type == "cuda" else 1
    lengths = [e.max_len for e in train_set]

    def seq_logps(m, b):
        logits = m(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, b.input_ids[:, 1:, None]).squeeze(2)
        mask = b.response_mask[:, 1:] & b.attention_mask[:, 1:].bool()
        return (logp * mask).sum(1).view(-1, 2)

    rows, step, epoch = [], 0, 0
    while step < cfg.max_steps:
        for idx in epoch_batches(len(train_set), cfg.batch_size, cfg.seed, epoch, lengths):
            if step == cfg.max_steps:
                break
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            host = collate([train_set[i] for i in idx], tok.pad_token_id, pad_multiple)
            b = host.to(device)
            policy = seq_logps(model, b)
            with torch.no_grad():
                reference = seq_logps(ref, b)
            h = policy - reference
            loss = -F.logsigmoid(0.1 * (h[:, 0] - h[:, 1])).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_value = loss.item()  # one sync per step, like the trainer's
            step += 1
            rows.append({"step": step, "tokens": int(host.attention_mask.sum()),
                         "padded_tokens": host.attention_mask.numel(),
                         "step_time_s": time.perf_counter() - t0, "loss": loss_value})
        epoch += 1
    return {"rows": rows, "reference": "frozen (bare loop)", "summary": None}


def run_one(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import prefalign.recipes.policy as run_mod
    from prefalign.config import load_config

    out_dir = Path(spec["output_dir"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = load_config(None, [
        f"model={spec['model']}", f"data.train={spec['train']}", f"data.eval={spec['eval']}",
        f"objective={spec['objective']}", f"reference={'frozen' if spec['mode'] == 'bare' else spec['mode']}", f"logps_impl={spec['logps_impl']}",
        f"dtype={spec['dtype']}", f"output_dir={out_dir}", f"ref_cache_dir={spec['ref_cache_dir']}",
        f"max_steps={spec['warmup_steps'] + spec['steps']}", f"batch_size={BATCH_PAIRS}",
        f"eval_batch_size={EVAL_ROWS}", f"max_length={MAX_LENGTH}", f"max_prompt_length={MAX_PROMPT_LENGTH}",
        f"learning_rate={LEARNING_RATE}", "lr_scheduler=constant", "warmup_ratio=0.0", "logging_steps=1",
        "eval_steps=0", "save_steps=0", "data.on_bad_row=skip", f"seed={TRAIN_SEED}", "progress=false"])
    cuda = spec["device"] == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    precompute = {}
    original = run_mod.write_reference_cache

    def timed_precompute(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        rows = original(*args, **kwargs)  # computes batch by batch while it writes
        sync()
        precompute["s"] = time.perf_counter() - t0
        precompute["examples"] = rows
        return rows

    run_mod.write_reference_cache = timed_precompute
    rss_start = peak_rss_mib()
    t0 = time.perf_counter()
    if spec["mode"] == "bare":
        bare = bare_dpo_loop(spec, cfg)
        summary, step_rows = None, {r["step"]: r for r in bare["rows"]}
    else:
        summary = run_mod.train(cfg)
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        step_rows = {r["step"]: r for r in rows if "step_time_s" in r}
    sync()
    train_wall = time.perf_counter() - t0
    rss_peak = peak_rss_mib()  # read before the bookkeeping below can add to it
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    device_used = (torch.cuda.get_device_name(0) if cuda else "cpu")

    total = cfg.max_steps
    if sorted(step_rows) != list(range(1, total + 1)):
        raise RuntimeError(f"step rows {sorted(step_rows)}, expected 1..{total} (logging_steps must be 1)")
    # the trainer logs, per step, its real and padded token counts and the step's wall time
    step_s = [step_rows[i]["step_time_s"] for i in range(1, total + 1)]
    warm = spec["warmup_steps"]
    timed = step_s[warm:]
    real_tokens = sum(step_rows[i]["tokens"] for i in range(warm + 1, total + 1))
    padded_tokens = sum(step_rows[i]["padded_tokens"] for i in range(warm + 1, total + 1))
    timed_s = sum(timed)
    if timed_s > train_wall:
        raise RuntimeError(f"timed steps take {timed_s:.3f} s, more than the whole train() call ({train_wall:.3f} s)")
    median = sorted(timed)[len(timed) // 2]
    data = summary["data"] if summary else {"train_examples": None, "eval_examples": None, "train": {"skipped": None}}
    return {
        "mode": spec["mode"], "objective": spec["objective"], "logps_impl": spec["logps_impl"],
        "dtype": spec["dtype"], "device": spec["device"], "device_name": device_used, "threads": spec["threads"],
        "reference": summary["reference"] if summary else "frozen (bare loop)", "warmup_steps": warm, "timed_steps": len(timed),
        "real_tokens": real_tokens, "padded_tokens": padded_tokens, "timed_s": round(timed_s, 4),
        "real_tokens_per_s": real_tokens / timed_s, "padded_tokens_per_s": padded_tokens / timed_s,
        "steps_per_s": len(timed) / timed_s, "padding_share": 1 - real_tokens / padded_tokens,
        "step_s_median": median, "step_s_min": min(timed), "step_s_max": max(timed),
        "step_s": [round(t, 5) for t in step_s],
        "peak_rss_mib": round(rss_peak, 1), "rss_before_train_mib": round(rss_start, 1),
        "peak_gpu_mib": round(gpu_peak, 1) if gpu_peak is not None else None,
        "precompute_s": round(precompute["s"], 3) if "s" in precompute else None,
        "precompute_examples": precompute.get("examples"),
        "reference_cache_hit": summary["reference_cache_hit"] if summary else None,
        "train_wall_s": round(train_wall, 3), "untimed_s": round(train_wall - timed_s, 3),
        "train_examples": data["train_examples"], "eval_examples": data["eval_examples"],
        "train_rows_skipped": data["train"]["skipped"],
        "final_loss": step_rows[total].get("loss"),
    }


# ---------------------------------------------------------------- parent: plan, launch, report

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    import torch

    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "device_name": cpu_name()}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan(modes: list[str], impl: str) -> list[tuple[str, str, str]]:
    """(reference mode, objective, logps impl) per run."""
    runs = []
    for mode in modes:
        objective = "simpo" if mode == "none" else "dpo"
        if mode == "bare":  # the hand-written loop has one path: full logits
            runs.append((mode, objective, "full"))
            continue
        if impl == "auto":
            impls = ["lean", "full"] if mode == "frozen" else ["lean"]
        else:
            impls = ["lean", "full"] if impl == "both" else [impl]
        runs += [(mode, objective, i) for i in impls]
    return runs


def launch(spec: dict) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(spec["threads"]))
    if spec["device"] == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{spec['mode']}/{spec['logps_impl']} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(results: list[dict]) -> str:
    head = ("| mode | objective | logps | dtype | real tok/s | padded tok/s | steps/s | median step ms | "
            "peak RSS MiB | peak GPU MiB |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['objective']} | {r['logps_impl']} | {r['dtype']} | failed | | | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['objective']} | {r['logps_impl']} | {r['dtype']} | "
                     f"{fmt(r['real_tokens_per_s'])} | {fmt(r['padded_tokens_per_s'])} | {fmt(r['steps_per_s'], 3)} | "
                     f"{fmt(r['step_s_median'] * 1000, 1)} | {fmt(r['peak_rss_mib'])} | {fmt(r['peak_gpu_mib'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DPO training throughput of prefalign's trainer (see the docstring).")
    p.add_argument("--work-dir", default=str(REPO / ".bench"), help="cache of model/tokenizer/data and run folders")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps run first and excluded from timing")
    p.add_argument("--modes", default="bare,frozen,precomputed,none",
                   help="comma-separated: bare (hand-written PyTorch DPO loop, the baseline), frozen, "
                        "precomputed, none (SimPO)")
    p.add_argument("--logps-impl", choices=["lean", "full", "both", "auto"], default="auto",
                   help="log-prob path; auto (default): lean and full for frozen, lean for the other modes")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights dtype")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all usable cores)")
    p.add_argument("--out", default=None, help="JSON results (default: <work-dir>/results.json)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one is not None:
        print(RESULT_MARK + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0

    if args.steps < 1 or args.warmup_steps < 0:
        p.error("--steps must be at least 1 and --warmup-steps at least 0")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("bare", "frozen", "precomputed", "none")]
    if bad or not modes:
        p.error(f"--modes: unknown {bad}; choose from bare, frozen, precomputed, none")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    threads = args.threads or usable_cpus()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_file = Path(args.out) if args.out else work / "results.json"

    machine = machine_info(device)
    print(f"machine: {machine['cpu']}; {machine['cpu_count']} CPUs ({machine['usable_cpus']} usable), "
          f"torch threads {threads}; torch {machine['torch']}; device {device} ({machine['device_name']})")
    assets = prepare_assets(work)
    if assets["tokenizer_text_fallback"]:
        log(f"note: {SHARED_TEXT} not found; tokenizer trained on {HARMLESS.name} instead (numbers are not "
            "comparable with runs that used the helpful-base text)")
    settings = {"steps": args.steps, "warmup_steps": args.warmup_steps, "batch_pairs": BATCH_PAIRS,
                "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "learning_rate": LEARNING_RATE,
                "train_rows": TRAIN_ROWS, "eval_rows": EVAL_ROWS, "dtype": args.dtype, "device": device,
                "threads": threads, "model_config": MODEL, "on_bad_row": "skip", **assets}
    print(f"settings: {args.steps} timed steps after {args.warmup_steps} warm-up steps; {BATCH_PAIRS} pairs/step, "
          f"max_length {MAX_LENGTH}, max_prompt_length {MAX_PROMPT_LENGTH}, dtype {args.dtype}; evaluation on "
          f"the {EVAL_ROWS}-row eval file at start and end is excluded from timing")

    runs = plan(modes, args.logps_impl)
    results = []
    for n, (mode, objective, impl) in enumerate(runs, start=1):
        name = f"{mode}-{impl}-{args.dtype}-{device}"
        cache = work / "ref-cache" / name
        if mode == "precomputed" and cache.exists():
            shutil.rmtree(cache)  # fresh: the first run computes the cache, timed separately
        spec = {**{k: assets[k] for k in ("model", "train", "eval")}, "mode": mode, "objective": objective,
                "logps_impl": impl, "dtype": args.dtype, "device": device, "threads": threads,
                "steps": args.steps, "warmup_steps": args.warmup_steps,
                "output_dir": str(work / "runs" / name), "ref_cache_dir": str(cache)}
        log(f"[{n}/{len(runs)}] {mode} / {objective} / logps {impl} ...")
        t0 = time.perf_counter()
        try:
            result = launch(spec)
        except RuntimeError as err:
            log(str(err))
            result = {"mode": mode, "objective": objective, "logps_impl": impl, "dtype": args.dtype,
                      "error": str(err)}
        results.append(result)
        log(f"    done in {time.perf_counter() - t0:.1f} s")

    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps({"machine": machine, "settings": settings, "runs": results}, indent=1))
    print()
    print(markdown(results))
    for r in results:
        if r.get("precompute_s") is not None:
            print(f"\none-off reference precompute ({r['mode']}, logps {r['logps_impl']}): {r['precompute_s']:.2f} s "
                  f"for {r['precompute_examples']} pairs (not part of the timed steps)")
    print(f"\nresults: {out_file}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
