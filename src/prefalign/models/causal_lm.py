"""Load HF causal LMs (a local folder or a Hub id, models/hub.py), run one concatenated forward, and provide reference log-probs.

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
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from prefalign.models.activations import ActivationRecorder
from prefalign.models.hub import resolve_model
from prefalign.logps import place, response_forward, token_kl, token_logps

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder, _ = resolve_model(path, revision, trust_remote_code)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    if tok.pad_token_id is None:
        # padding positions are masked everywhere, so any id works; EOS is the usual choice
        tok.pad_token = tok.eos_token
    # prefalign truncates prompt and response itself (data/tokenize.py); the tokenizer's own
    # length warning fires on the untruncated text and would only mislead
    tok.model_max_length = 1 << 30
    return tok


def load_model(path: str, dtype: str = "float32", gradient_checkpointing: bool = False,
               revision: str | None = None, trust_remote_code: bool = False):
    """A causal LM from a folder or Hub id. trust_remote_code=True runs modelling code shipped with the
    model (a config's auto_map); off by default, so only transformers' own classes ever load."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    # a Hub id becomes its cached snapshot folder here; from_pretrained then reads that folder only
    folder, _ = resolve_model(path, revision, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                 local_files_only=True, use_safetensors=True)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules=None):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=target_modules or "all-linear")
    return get_peft_model(model, config)


class MaskHead(torch.nn.Module):
    """SparsePO's learned token-mask head (arXiv:2410.05102; the release's `simple_all` head).

    Reads the reference model's hidden states at the M positions that predict response tokens,
    [L, M, H] (every layer's output, HF's hidden_states[1:]). Per mask: one LayerNorm shared by
    the layers, then per layer Linear(H, 1) -> ReLU -> dropout, then a bias-free Linear(L, 1)
    across layers. Returns [M, masks] pre-activation mask logits: the objective applies the
    final ReLU, so gradients reach the head through 'mask_logits'. The release applies dropout
    after that ReLU; dropout and ReLU commute (dropout only zeroes or scales by 1/(1-p) > 0), so
    it is applied to the logits here. masks=1 is SparsePO-common (one mask for rewards and KL),
    masks=2 SparsePO-indp (two independent heads: [..., 0] rewards, [..., 1] KL).
    """

    def __init__(self, hidden: int, layers: int, masks: int = 1, dropout: float = 0.01):
        super().__init__()
        self.config = {"hidden": hidden, "layers": layers, "masks": masks, "dropout": dropout}
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(hidden) for _ in range(masks))
        self.per_layer = torch.nn.ModuleList(
            torch.nn.ModuleList(torch.nn.Linear(hidden, 1) for _ in range(layers)) for _ in range(masks))
        self.mixers = torch.nn.ModuleList(torch.nn.Linear(layers, 1, bias=False) for _ in range(masks))
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.shape[0] != self.config["layers"]:
            raise ValueError(f"the mask head was built for {self.config['layers']} layers, got {states.shape[0]}")
        out = []
        for norm, linears, mixer in zip(self.norms, self.per_layer, self.mixers):
            # the head trains in float32 whatever the model's dtype (LayerNorm in bf16 loses the mean)
            normed = norm(states.to(norm.weight.dtype))
            scores = torch.cat([lin(normed[i]) for i, lin in enumerate(linears)], dim=-1)   # [M, L]
            out.append(self.dropout(mixer(self.dropout(torch.relu(scores)))))
        return torch.cat(out, dim=-1)


class ReferenceStates(NamedTuple):
    """What the policy's forward needs from the reference at the response positions (no grad).

    rows/head: the reference's ResponseForward rows and head (token KL); layers: its [L, M, H]
    layer outputs (mask head). Each may be None when the objective does not need it.
    """

    rows: torch.Tensor | None = None
    head: torch.Tensor | None = None
    layers: torch.Tensor | None = None


class PolicyLogps(torch.nn.Module):
    """Wraps the HF model so that the whole log-prob computation is this module's forward.

    Distributed wrappers (DDP, FSDP) synchronise gradients only for work done inside the
    wrapped module's forward; the lean path calls the decoder and output projection directly,
    so it must live here rather than in the training step. The same holds for every feature
    whose gradient reaches trainable parameters: the token KL against the reference and the
    SparsePO mask head (a submodule here, so the optimizer, DDP and checkpoints see it).
    """

    def __init__(self, model, impl: str = "lean", mask_head: MaskHead | None = None):
        super().__init__()
        self.model = model
        self.impl = impl
        self.mask_head = mask_head

    def forward(self, input_ids, attention_mask, response_mask, target_index=None, packed=None,
                reference: ReferenceStates | None = None):
        """[N, T] response token log-probs; with `reference`, a dict of them ("token_logps") and of
        the features computed against it: "token_kl" [N, T] when it has rows, "mask_logits"
        [N, T] (common mask) or [N, T, 2] (independent masks) when it has layers. `packed`: the
        rows packed without padding (packing.py), which the model then reads instead."""
        if reference is None:
            return token_logps(self.model, input_ids, attention_mask, response_mask, self.impl, target_index, packed)
        fwd = response_forward(self.model, input_ids, attention_mask, response_mask, self.impl,
                               target_index=target_index, packed=packed)
        out = {"token_logps": fwd.token_logps}
        if reference.rows is not None:
            out["token_kl"] = token_kl(fwd, reference.rows, reference.head)
        if reference.layers is not None:
            if self.mask_head is None:
                raise ValueError("mask logits need the policy's mask head, and this policy has none")
            logits = self.mask_head(reference.layers)
            logits = logits.squeeze(-1) if logits.shape[-1] == 1 else logits   # common mask: [M]
            out["mask_logits"] = place(logits, fwd)
        return out


def model_args(rows) -> tuple:
    """The positional arguments of PolicyLogps.forward from a batch of rows (data.collate.Rows)."""
    return rows.input_ids, rows.attention_mask, rows.response_mask, rows.target_index, rows.packed


def to_slots(values: torch.Tensor, row_index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Scatter per-row values [N, ...] into [B, K, ...] slots (zeros where a slot is empty)."""
    out = values.new_zeros((shape[0] * shape[1],) + tuple(values.shape[1:]))
    out[row_index] = values
    return out.view(*shape, *values.shape[1:])


def sequence_sums(tok_logps: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K] summed response log-probs and response token counts of a collated Batch's list rows."""
    n = batch.n_rows  # rows after the N list rows are extra rows (data/collate.py)
    n_tokens = batch.scored_mask(n).sum(1).float()
    return to_slots(tok_logps[:n].sum(1), batch.row_index, batch.shape), to_slots(n_tokens, batch.row_index,
                                                                                  batch.shape)


class ReferenceOut(NamedTuple):
    """A reference forward with the extras an objective asked for (all without gradient).

    token_logps [N, T]; states: what the policy's forward needs (ReferenceStates);
    activation_mask [N, T] in [0, 1] (SparsePO's activation masks) or None.
    """

    token_logps: torch.Tensor
    states: ReferenceStates
    activation_mask: torch.Tensor | None


@torch.no_grad()
def reference_forward(model, batch, impl: str, rows: bool = False, layers: bool = False,
                      activations: bool = False) -> ReferenceOut:
    """One no-grad forward of the reference `model` giving token log-probs and the requested extras:
    rows/head for the token KL, layer outputs for the mask head, activation masks from hooks."""
    *args, target_index, packed = model_args(batch)
    recorder = ActivationRecorder(model) if activations else None
    if recorder is not None:
        with recorder:
            fwd = response_forward(model, *args, impl, layers=layers, target_index=target_index, packed=packed)
        if packed is not None:  # the hooks saw [R, L] packed maps: read them back onto the [N, T] grid
            n, t = args[0].shape
            recorder.maps = {g: [m.reshape(-1).index_select(0, packed.where).view(n, t) for m in maps]
                             for g, maps in recorder.maps.items()}
    else:
        fwd = response_forward(model, *args, impl, layers=layers, target_index=target_index, packed=packed)
    states = ReferenceStates(fwd.rows if rows else None, fwd.head if rows else None, fwd.layers)
    return ReferenceOut(fwd.token_logps, states, recorder.mask(fwd.target_mask) if recorder else None)


class FrozenReference:
    def __init__(self, model, impl: str = "lean", copy_model: bool = True):
        # the policy's own weights must be copied (they are about to change); a separately
        # loaded reference model needs no second copy
        self.model = PolicyLogps(copy.deepcopy(model) if copy_model else model, impl).eval().requires_grad_(False)

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        return self.model(*model_args(batch))

    def features(self, batch, **wanted) -> ReferenceOut:
        return reference_forward(self.model.model, batch, self.model.impl, **wanted)


class AdapterOffReference:
    """The policy's base weights: the LoRA adapter switched off for the reference forward."""

    def __init__(self, policy: PolicyLogps):
        self.policy = policy

    def to(self, device):
        return self

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        peft_model = self.policy.model
        with peft_model.disable_adapter():
            return self.policy(*model_args(batch))

    def features(self, batch, **wanted) -> ReferenceOut:
        with self.policy.model.disable_adapter():
            return reference_forward(self.policy.model, batch, self.policy.impl, **wanted)


def save_mask_head(head: MaskHead, folder: Path) -> None:
    """The head's weights and shape beside a saved model (mask_head.safetensors / .json)."""
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(folder / "mask_head.safetensors"))
    (folder / "mask_head.json").write_text(json.dumps(head.config))


def load_mask_head(folder: Path, head: MaskHead | None = None) -> MaskHead:
    """Restore a saved head into `head` (checked to have the saved shape), or build it from the folder."""
    folder = Path(folder)
    if not (folder / "mask_head.safetensors").exists():
        raise FileNotFoundError(f"{folder} has no mask_head.safetensors (saved by runs of objective sparsepo)")
    config = json.loads((folder / "mask_head.json").read_text())
    if head is None:
        head = MaskHead(**config)
    elif {k: v for k, v in head.config.items() if k != "dropout"} != \
            {k: v for k, v in config.items() if k != "dropout"}:
        raise ValueError(f"{folder}: saved mask head {config} does not match this run's {head.config}")
    head.load_state_dict(load_file(str(folder / "mask_head.safetensors")))
    return head


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
    """Hash of the tokenized data: ids and boundaries, so tokenizer, template and truncation count.
    The feature suppliers' extra rows are part of it: a precomputed reference scores some of them
    (reference samples, LongPO's short-context rows)."""
    h = hashlib.sha256()
    for e in examples:
        rows = [e.sequences, e.response_starts] + [e.policy_rows[k] for k in sorted(e.policy_rows)]
        rows += [e.side_rows[k] for k in sorted(e.side_rows)]
        h.update(json.dumps(rows).encode())
    return h.hexdigest()


def reference_cache_path(cache_dir: str, model_path: str, examples, impl: str, dtype: str) -> Path:
    # "v2": the cache holds named tensors (see load_or_compute_reference); older caches never match
    key = hashlib.sha256("|".join([model_fingerprint(model_path), data_fingerprint(examples), impl, dtype, "v2"])
                         .encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser() / f"reflogps-{key}.safetensors"


def load_or_compute_reference(path: Path, compute) -> tuple[dict[str, torch.Tensor], bool]:
    """Cached reference values ({"responses": [N, K], supplier name: [N], ...}), or compute them and
    write the cache atomically."""
    if path.exists():
        return load_file(str(path)), True
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in values.items()}, str(tmp))
    tmp.replace(path)
    return values, False


def with_reference(examples: list, values: dict[str, torch.Tensor], offset: int = 0) -> list:
    """Copies of the tokenized examples carrying their precomputed reference values (rows offset,
    offset + 1, ... of `values`): the precomputed reference provider. Collate turns them into the
    batch's reference_logps; a supplier reads its own entry (e.g. the reference samples' sums)."""
    out = []
    for i, e in enumerate(examples, start=offset):
        entry = {name: v[i].tolist() for name, v in values.items()}
        entry["responses"] = entry["responses"][: len(e.sequences)]
        out.append(replace(e, reference=entry))
    return out
