"""Run folders: what a run writes, refusing to train over an earlier run, loading a trained policy.

A folder holds a run when it has any of config.yaml, summary.json, final/ or checkpoint-*.
Training into one needs resume=true (continue it) or overwrite=true (replace it); overwrite
deletes only the earlier run's own outputs, listed in the message, never other files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prefalign.train.checkpoint import checkpoints

# what `prefalign train` and `train-rm` write into output_dir (".*.tmp": an interrupted atomic save)
RUN_OUTPUTS = ("config.yaml", "summary.json", "metrics.jsonl", "overopt.json", "final", "best", "last-healthy",
               "tensorboard", "wandb", "checkpoint-*", ".*.tmp")
RUN_MARKERS = ("config.yaml", "summary.json", "final", "checkpoint-*")
# a curriculum's top folder: its held-out pairs, one run folder per stage and the overall summary
CURRICULUM_OUTPUTS = ("summary.json", "heldout.jsonl", "stage-*")
CURRICULUM_MARKERS = ("summary.json", "stage-*")
# what `prefalign quickstart` writes; it starts fresh in a folder that holds only these
# every file and folder run_quickstart writes (tests/test_quickstart.py reruns it in the same folder)
QUICKSTART_OUTPUTS = {"train.jsonl", "heldout.jsonl", "prompts.jsonl", "run", "quickstart.json",
                      "training_curves.png", ".prefalign-quickstart"}
QUICKSTART_MARKER = ".prefalign-quickstart"


class RunFolderExists(ValueError):
    pass


def matching(folder: Path, patterns) -> list[Path]:
    return sorted({p for pattern in patterns for p in Path(folder).glob(pattern)})


def claim_run_dir(out_dir: Path, resume: bool, overwrite: bool, outputs=RUN_OUTPUTS, markers=RUN_MARKERS,
                  command: str = "train") -> list[Path]:
    """Check that a run may write into out_dir; return the earlier outputs overwrite=true replaces.

    Reads only: every process calls it before any of them writes; the caller deletes."""
    found = matching(out_dir, markers)
    earlier = matching(out_dir, outputs)
    if resume and found and "checkpoint-*" in markers and not checkpoints(out_dir):
        # resuming needs a checkpoint: without one the run would start again and replace the earlier results
        raise RunFolderExists(
            f"resume=true, but {out_dir} holds a run ({', '.join(p.name for p in found)}) without a complete "
            f"checkpoint to continue from (save_steps was 0?). To start again, set overwrite=true instead, which "
            f"deletes {', '.join(p.name for p in earlier)} in that folder. Nothing was changed.")
    if not found or resume:
        return []
    if not overwrite:
        raise RunFolderExists(
            f"{out_dir} already holds a run ({', '.join(p.name for p in found)}): `prefalign {command}` would replace "
            f"its results. Continue it with resume=true (--resume), or replace it with overwrite=true, which deletes "
            f"{', '.join(p.name for p in earlier)} in that folder. Or choose another output_dir. Nothing was changed.")
    return earlier


# what `prefalign diagnose` writes; it swaps in a whole new report folder
REPORT_FILES = ("report.md", "report.html", "report.json", "*.png")


def check_report_dir(out_dir: Path) -> None:
    """A report replaces its whole folder: refuse one that holds anything but an earlier report."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    ours = set(matching(out_dir, REPORT_FILES))
    other = sorted(p.name for p in out_dir.iterdir() if p not in ours)
    if other:
        raise RunFolderExists(f"{out_dir} holds files that are not a diagnostics report ({', '.join(other[:8])}); "
                              "the report replaces its whole folder: choose another --output-dir. Nothing was changed.")


def remove(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def claim_quickstart_dir(out: Path) -> list[str]:
    """Start fresh in out: remove an earlier quickstart's outputs, refuse a folder holding anything else.

    Returns the names removed. A folder counts as a quickstart's when it has the marker file (written
    first) or quickstart.json, and nothing but quickstart outputs."""
    out = Path(out)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries:
        foreign = [n for n in entries if n not in QUICKSTART_OUTPUTS]
        if foreign or not ({QUICKSTART_MARKER, "quickstart.json"} & set(entries)):
            raise RunFolderExists(f"{out} is not an earlier quickstart folder (it holds {', '.join(entries[:8])}); "
                                  "quickstart starts fresh and removes only its own earlier outputs: choose another "
                                  "--output-dir or empty this one")
        remove([out / n for n in entries])
    out.mkdir(parents=True, exist_ok=True)
    (out / QUICKSTART_MARKER).write_text("a prefalign quickstart folder: the next quickstart here replaces it\n")
    return entries


def load_policy(folder: Path, base: str | None = None, dtype: str = "float32"):
    """A saved policy: a full model folder, or a LoRA adapter folder (adapter_config.json) merged into `base`."""
    from prefalign.models.causal_lm import load_model

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        return load_model(str(folder), dtype)
    from peft import PeftModel

    if not base:
        raise ValueError(f"{folder} holds a LoRA adapter; its base model is unknown (give --reference or a run)")
    return PeftModel.from_pretrained(load_model(base, dtype), str(folder)).merge_and_unload()


def run_base_model(run_dir: Path) -> str:
    """The model a run started from (config.yaml's `model`)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))["model"]


def load_run_policy(run_dir: Path, which: str = "final", dtype: str = "float32"):
    """(model, tokenizer) of a trained run's `which` folder (final, best or checkpoint-N)."""
    from prefalign.models.causal_lm import load_tokenizer

    folder = Path(run_dir) / which
    base = run_base_model(run_dir)
    tokenizer_from = folder if (folder / "tokenizer_config.json").is_file() else base
    return load_policy(folder, base, dtype), load_tokenizer(str(tokenizer_from))
