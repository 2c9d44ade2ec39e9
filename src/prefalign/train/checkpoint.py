"""Atomic, rotated checkpoints with everything an exact resume needs.

A checkpoint is written into a hidden temporary folder and renamed into place only when
complete, so a crash mid-save never leaves a half-written `checkpoint-N` (OpenRLHF#128).
It holds the model (save_pretrained, safetensors; SparsePO's mask head beside it), optimizer,
scheduler, every RNG state and the data cursor. Nothing is unpickled on resume: optimizer and scheduler states are read with
torch.load(weights_only=True), RNG states are JSON and safetensors.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prefalign.models.causal_lm import save_mask_head

STATE_FILE = "trainer_state.json"


def save_rng_state(folder: Path) -> None:
    """Every RNG state, without pickle: JSON for Python/NumPy, safetensors for torch."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    (folder / "rng.json").write_text(json.dumps({
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)]}))
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(folder / "rng.safetensors"))


def load_rng_state(folder: Path) -> None:
    state = json.loads((folder / "rng.json").read_text())
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, np_gauss))
    tensors = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def write_atomic(folder: Path, write: Callable[[Path], None]) -> Path:
    """Fill a hidden temporary folder with `write(tmp)`, then rename it to `folder`: a crash
    mid-save leaves the previous `folder` (or none), never a half-written one."""
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def write_model(model, tokenizer, folder: Path, mask_head=None) -> None:
    """A policy's weights (save_pretrained, safetensors), its tokenizer and SparsePO's mask head."""
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if mask_head is not None:  # SparsePO's learned mask head trains with the model: it is saved with it
        save_mask_head(mask_head, folder)


def save_model_atomic(model, tokenizer, folder: Path, mask_head=None) -> None:
    write_atomic(folder, lambda tmp: write_model(model, tokenizer, tmp, mask_head))


def save_checkpoint(out_dir: Path, step: int, write_weights: Callable[[Path], None], optimizer, scheduler,
                    state: dict, keep_last: int) -> Path:
    """checkpoint-N: the trainee's weights (write_weights(folder)), optimizer, scheduler, RNG, loop state."""

    def write(tmp: Path) -> None:
        write_weights(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        save_rng_state(tmp)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))

    final = write_atomic(Path(out_dir) / f"checkpoint-{step}", write)
    rotate(out_dir, keep_last)
    return final


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder without its state file is not one)."""
    found = []
    for p in Path(out_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / STATE_FILE).exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def rotate(out_dir: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old)


def load_weights(model, folder: Path) -> None:
    """Load weights written by save_pretrained back into `model` (full model or PEFT adapter)."""
    folder = Path(folder)
    if hasattr(model, "restore_weights"):  # a model that writes its own folder layout (reward models)
        model.restore_weights(folder)
        return
    if (folder / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(model.config, "tie_word_embeddings", False) \
        else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")


def load_checkpoint(folder: Path, read_weights: Callable[[Path], None], optimizer, scheduler) -> dict:
    read_weights(folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    load_rng_state(folder)
    return json.loads((folder / STATE_FILE).read_text())
