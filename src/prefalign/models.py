"""Load local HF causal LMs, run one concatenated forward, and provide reference log-probs.

Reference modes:
  frozen       a frozen copy of the initial policy, kept resident.
  adapter_off  the policy itself with its LoRA adapter disabled (no second copy in memory).
  precomputed  reference log-probs computed once before training and cached on disk, keyed by
               the model files and the tokenized data, reused by later runs (no resident copy).
  none         for reference-free objectives.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prefalign.logps import token_logps

REFERENCE_MODES = ("frozen", "adapter_off", "precomputed", "none")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    if tok.pad_token_id is None:
        # padding positions are masked everywhere, so any id works; EOS is the usual choice
        tok.pad_token = tok.eos_token
    # prefalign truncates prompt and response itself (data/tokenize.py); the tokenizer's own
    # length warning fires on the untruncated text and would only mislead
    tok.model_max_length = 1 << 30
    return tok


def load_model(path: str, dtype: str = "float32", gradient_checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {path} (prefalign loads models from local folders only)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=False, local_files_only=True, use_safetensors=True)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules=None):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=target_modules or "all-linear")
    return get_peft_model(model, config)


class PolicyLogps(torch.nn.Module):
    """Wraps the HF model so that the whole log-prob computation is this module's forward.

    Distributed wrappers (DDP, FSDP) synchronise gradients only for work done inside the
    wrapped module's forward; the lean path calls the decoder and output projection directly,
    so it must live here rather than in the training step.
    """

    def __init__(self, model, impl: str = "lean"):
        super().__init__()
        self.model = model
        self.impl = impl

    def forward(self, input_ids, attention_mask, response_mask):
        return token_logps(self.model, input_ids, attention_mask, response_mask, self.impl)


def to_slots(values: torch.Tensor, row_index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Scatter per-row values [N, ...] into [B, K, ...] slots (zeros where a slot is empty)."""
    out = values.new_zeros((shape[0] * shape[1],) + tuple(values.shape[1:]))
    out[row_index] = values
    return out.view(*shape, *values.shape[1:])


def sequence_sums(tok_logps: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K] summed response log-probs and response token counts."""
    shape = tuple(batch["valid"].shape)
    n = batch["row_index"].numel()  # rows after the N list rows are extra rows (data/collate.py)
    scored = batch["response_mask"][:n, 1:] & batch["attention_mask"][:n, 1:].bool()
    n_tokens = scored.sum(1).float()
    return to_slots(tok_logps[:n].sum(1), batch["row_index"], shape), to_slots(n_tokens, batch["row_index"], shape)


class FrozenReference:
    def __init__(self, model, impl: str = "lean"):
        self.model = PolicyLogps(copy.deepcopy(model), impl).eval().requires_grad_(False)

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        return self.model(batch["input_ids"], batch["attention_mask"], batch["response_mask"])


class AdapterOffReference:
    """The policy's base weights: the LoRA adapter switched off for the reference forward."""

    def __init__(self, policy: PolicyLogps):
        self.policy = policy

    def to(self, device):
        return self

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        peft_model = self.policy.model
        with peft_model.disable_adapter():
            return self.policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])


def model_fingerprint(path: str) -> str:
    """Hash of the model folder's config and weight files (size + head and tail bytes).

    Reading whole multi-GB weight files on every run would cost more than it saves; size plus
    the first and last MiB of each file changes whenever the weights do in practice.
    """
    h = hashlib.sha256()
    folder = Path(path)
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".json", ".bin", ".model", ".gguf")):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                if f.stat().st_size > 1 << 20:
                    fh.seek(-(1 << 20), 2)
                    h.update(fh.read())
    return h.hexdigest()


def data_fingerprint(examples) -> str:
    """Hash of the tokenized data: ids and boundaries, so tokenizer, template and truncation count."""
    h = hashlib.sha256()
    for e in examples:
        # reference samples are cached too (the last column): they are part of the key when present
        rows = [e.sequences, e.response_starts] + ([e.ref_sample] if e.ref_sample is not None else [])
        h.update(json.dumps(rows).encode())
    return h.hexdigest()


def reference_cache_path(cache_dir: str, model_path: str, examples, impl: str, dtype: str) -> Path:
    key = hashlib.sha256("|".join([model_fingerprint(model_path), data_fingerprint(examples), impl, dtype])
                         .encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser() / f"reflogps-{key}.safetensors"


def load_or_compute_reference(path: Path, compute) -> tuple[torch.Tensor, bool]:
    """Cached [N, K] reference log-probs, or compute them and write the cache atomically."""
    if path.exists():
        return load_file(str(path))["logps"], True
    logps = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logps": logps.contiguous()}, str(tmp))
    tmp.replace(path)
    return logps, False
