"""General Preference embedding Model (GPM): arXiv 2410.02197 (Zhang et al., "Beyond Bradley-Terry Models").

Each (prompt x, response y) is embedded ONCE into a preference embedding v_{y|x} in R^{2k}; two
responses are compared by a skew-symmetric bilinear form

    s(y_i > y_j | x) = < R(x) v_i, v_j >,    R(x) = blockdiag(lambda_1(x) J, ..., lambda_k(x) J),
    J = [[0, -1], [1, 0]],                    P(y_i > y_j | x) = sigmoid(s / beta),

so s(i > j) = -s(j > i) and s(i > i) = 0 hold exactly for any embedding: P(a>b) + P(b>a) = 1 and
P(a>a) = 1/2 by construction. Comparing M responses costs M backbone passes plus O(k) per pair
(not M^2 passes as a pairwise PairRM model would), and a cyclic preference (rock > scissors >
paper > rock) is representable: three unit vectors 120 degrees apart in one 2-d block form one.
Per block the score is lambda * (a1 b2 - a2 b1) = lambda * sin(angle from a to b) for unit blocks.

As in the paper: v is L2-normalised to unit length (the "eigenvector embedding head") and each
2-d block is scaled by a non-negative, prompt-dependent eigenvalue lambda_l(x) from a gate that
reads the prompt only (the "eigenvalue scale gate"); the loss is -log P(chosen > rejected).
Departures / choices the paper's text did not pin down for me: the gate here is
softplus(Linear(prompt features)), and with `gate=False` the k eigenvalues are learned constants
(softplus of a parameter) so that a head can run without a separate prompt pass; `beta` is a
fixed temperature (1.0 by default: the eigenvalues already learn the scale).
Sign convention: the paper writes <R v_i, v_j> = v_i^T R^T v_j; writing v_i^T R v_j instead only
flips the sign of R, which the learned embedding absorbs.

Interface for the reward-model registry (train-rm / eval-rm):
    head = GPMHead(hidden_size, k=4, gate=True, mlp_hidden=0, beta=1.0)
    v, lambdas = head(features [N, H], prompt_features [N, H] | None)   # v [N, 2k] unit norm, lambdas [N, k]
    gpm_loss(v_chosen, v_rejected, lambdas, beta) -> per_example [N]   (mean it for the step)
    gpm_probability(v_a, v_b, lambdas, beta) -> [N] P(a > b)
  features: RewardBackbone(prompt, response) pooled vectors; prompt_features: the backbone on
  (prompt, "") (only when gate=True). Data: ordinary pairs (prompt, chosen, rejected), no extra field.
  Saved as a folder: backbone/ (save_pretrained, safetensors + tokenizer), head.safetensors,
  reward_model.json {"kind": "gpm", "head": {constructor params}, "backbone": {...}}.
  `score()` has no meaning for a GPM (no scalar reward); judges.preference_model only compares.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

MODEL_FILE = "reward_model.json"
HEAD_FILE = "head.safetensors"


def skew_operator(k: int, lambdas: torch.Tensor | None = None) -> torch.Tensor:
    """The explicit [2k, 2k] matrix R (or [N, 2k, 2k] for lambdas [N, k]); for tests and reading.
    The fast path (`preference_score`) never builds it."""
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=lambdas.dtype if lambdas is not None else torch.float32)
    blocks = torch.block_diag(*([J] * k))
    if lambdas is None:
        return blocks
    scale = lambdas.repeat_interleave(2, dim=-1)  # [.., 2k]: each eigenvalue scales its block's rows
    return scale.unsqueeze(-1) * blocks


def rotate(v: torch.Tensor) -> torch.Tensor:
    """J applied to every 2-d block of v [..., 2k]: (a1, a2) -> (-a2, a1)."""
    pairs = v.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def preference_score(v_a: torch.Tensor, v_b: torch.Tensor, lambdas: torch.Tensor | None = None) -> torch.Tensor:
    """s(a > b) = <R(x) v_a, v_b> = sum_l lambda_l (a_{l,1} b_{l,2} - a_{l,2} b_{l,1}); [N, 2k] x2 -> [N]."""
    per_block = (rotate(v_a) * v_b).unflatten(-1, (-1, 2)).sum(-1)  # [N, k]
    if lambdas is not None:
        per_block = per_block * lambdas
    return per_block.sum(-1)


def preference_matrix(v: torch.Tensor, lambdas: torch.Tensor | None = None) -> torch.Tensor:
    """All-pairs scores S[i, j] = s(i > j) for M responses to ONE prompt: v [M, 2k], lambdas [k].
    M embeddings and one [M, 2k] x [2k, M] product: the linear-query-cost property."""
    rv = rotate(v)
    if lambdas is not None:
        rv = rv * lambdas.repeat_interleave(2, dim=-1)
    return rv @ v.T


def gpm_probability(v_a, v_b, lambdas=None, beta: float = 1.0) -> torch.Tensor:
    return torch.sigmoid(preference_score(v_a, v_b, lambdas) / beta)


def gpm_loss(v_chosen, v_rejected, lambdas=None, beta: float = 1.0) -> torch.Tensor:
    """-log P(chosen > rejected) per example [N] (logsigmoid: finite for any score)."""
    return -F.logsigmoid(preference_score(v_chosen, v_rejected, lambdas) / beta)


def projection(hidden_size: int, out: int, mlp_hidden: int) -> torch.nn.Module:
    """A linear map, or a one-hidden-layer MLP when mlp_hidden > 0 (for frozen backbones)."""
    if mlp_hidden <= 0:
        return torch.nn.Linear(hidden_size, out)
    return torch.nn.Sequential(torch.nn.Linear(hidden_size, mlp_hidden), torch.nn.GELU(),
                               torch.nn.Linear(mlp_hidden, out))


class GPMHead(torch.nn.Module):
    """Pooled features [N, H] -> unit preference embeddings [N, 2k] and block eigenvalues [N, k]."""

    def __init__(self, hidden_size: int, k: int = 4, gate: bool = True, mlp_hidden: int = 0, beta: float = 1.0):
        super().__init__()
        if k < 1:
            raise ValueError(f"GPM needs k >= 1 two-dimensional blocks, got k={k}")
        if beta <= 0:
            raise ValueError(f"GPM temperature beta must be positive, got {beta}")
        self.params = {"hidden_size": hidden_size, "k": k, "gate": gate, "mlp_hidden": mlp_hidden, "beta": beta}
        self.k, self.beta, self.gate = k, beta, gate
        self.embed = projection(hidden_size, 2 * k, mlp_hidden)
        # softplus(0.5413) = 1: every block starts with eigenvalue 1
        if gate:
            self.scale_gate = torch.nn.Linear(hidden_size, k)
            torch.nn.init.zeros_(self.scale_gate.weight)
            torch.nn.init.constant_(self.scale_gate.bias, 0.5413)
        else:
            self.log_scale = torch.nn.Parameter(torch.full((k,), 0.5413))

    def eigenvalues(self, prompt_features: torch.Tensor | None, n: int) -> torch.Tensor:
        if not self.gate:
            return F.softplus(self.log_scale).expand(n, self.k)
        if prompt_features is None:
            raise ValueError("this GPM head has a prompt gate (gate=True): pass prompt_features, "
                             "the backbone's pooled vector for (prompt, '')")
        return F.softplus(self.scale_gate(prompt_features))

    def forward(self, features: torch.Tensor, prompt_features: torch.Tensor | None = None):
        v = F.normalize(self.embed(features), dim=-1)
        return v, self.eigenvalues(prompt_features, features.shape[0])

    def loss(self, chosen: torch.Tensor, rejected: torch.Tensor, prompt_features=None) -> torch.Tensor:
        """Per-example loss on pooled features of the chosen and rejected responses to the same prompts."""
        v_c, lam = self(chosen, prompt_features)
        v_r, _ = self(rejected, prompt_features)
        return gpm_loss(v_c, v_r, lam, self.beta)

    def probability(self, a: torch.Tensor, b: torch.Tensor, prompt_features=None) -> torch.Tensor:
        v_a, lam = self(a, prompt_features)
        v_b, _ = self(b, prompt_features)
        return gpm_probability(v_a, v_b, lam, self.beta)


# ---- saved format (shared with rewards.pal): backbone/ + head.safetensors + reward_model.json ----

def save_head_model(folder, kind: str, head: torch.nn.Module, params: dict, backbone=None, extra: dict | None = None) -> Path:
    """Write the model into a hidden temp folder, then rename it into place (a crash never leaves half a model)."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = {"kind": kind, "head": params, **(extra or {})}
    if backbone is not None:
        backbone.model.save_pretrained(tmp / "backbone", safe_serialization=True)
        backbone.tokenizer.save_pretrained(tmp / "backbone")
        # AutoModel saves a bare LlamaModel whose config no longer says "ForCausalLM": keep the pooling rule
        meta["backbone"] = {"decoder": backbone.decoder, "max_length": backbone.max_length,
                            "max_response_length": backbone.max_response_length}
    save_file({k: t.detach().contiguous().cpu() for k, t in head.state_dict().items()}, str(tmp / HEAD_FILE))
    (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def read_head_model(folder, kind: str, head_cls, load_backbone: bool = True):
    """(head, backbone | None, meta) from a saved folder; checks the kind and the head's tensors."""
    folder = Path(folder)
    meta_path = folder / MODEL_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved reward model: no {MODEL_FILE}")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{meta_path}: kind is {meta.get('kind')!r}, expected {kind!r}")
    head = head_cls(**meta["head"])
    head.load_state_dict(load_file(str(folder / HEAD_FILE)), strict=True)
    backbone = None
    if load_backbone:
        from prefalign.rewards.backbone import RewardBackbone

        saved = meta.get("backbone")
        if saved is None or not (folder / "backbone").is_dir():
            raise FileNotFoundError(f"{folder} holds no backbone/ folder; it was saved head-only")
        backbone = RewardBackbone(str(folder / "backbone"), max_length=saved["max_length"],
                                  max_response_length=saved["max_response_length"])
        backbone.decoder = saved["decoder"]
    return head.eval(), backbone, meta


def save_gpm(folder, head: GPMHead, backbone=None) -> Path:
    return save_head_model(folder, "gpm", head, head.params, backbone)


def load_gpm(folder, load_backbone: bool = True):
    head, backbone, _ = read_head_model(folder, "gpm", GPMHead, load_backbone)
    return head, backbone
