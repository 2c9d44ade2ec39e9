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

Registered as reward kind "gpm" (rewards/heads.py): `prefalign train-rm kind=gpm` trains it on
ordinary pairs with the one loop; the gate's prompt features are the backbone on (prompt, ""),
computed once per distinct prompt of a batch (RewardModel.encode/outputs).
    head = GPMHead(hidden_size, k=4, gate=True, mlp_hidden=0, beta=1.0)
    out = head(features [N, H], prompt_features [N, H] | None)  # {"embedding": [N, 2k] unit, "scales": [N, k]}
    head.probability(out_a, out_b) -> [N] P(a > b);  gpm_pair_loss(out_c, out_r, batch) -> [N]
  Saved in the common reward-model folder (rewards/model.py: backbone/, head.safetensors,
  reward_model.json with kind "gpm"); load_reward_model reads it. A GPM has no scalar reward:
  `score()` / `rewards()` raise; judges.preference_model only compares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """Pooled features [N, H] -> unit preference embeddings [N, 2k] and block scales [N, k].

    Reward-kind interface (rewards/heads.py): forward returns {"embedding": v, "scales": lambda / beta}
    (the eigenvalues with the temperature folded in, so that P = sigmoid(<R v_a, v_b>) reads them
    directly); probability(out_a, out_b) is P(a > b); there is no scalar reward (`scalar = False`)."""

    reads = "pooled"
    scalar = False

    def __init__(self, hidden_size: int, k: int = 4, gate: bool = True, mlp_hidden: int = 0, beta: float = 1.0):
        super().__init__()
        if k < 1:
            raise ValueError(f"GPM needs k >= 1 two-dimensional blocks, got k={k}")
        if beta <= 0:
            raise ValueError(f"GPM temperature beta must be positive, got {beta}")
        self.params = {"k": k, "gate": gate, "mlp_hidden": mlp_hidden, "beta": beta}
        self.k, self.beta, self.gate = k, beta, gate
        self.inputs = ("prompt_features",) if gate else ()
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

    def forward(self, features: torch.Tensor, prompt_features: torch.Tensor | None = None) -> dict:
        v = F.normalize(self.embed(features), dim=-1)
        return {"embedding": v, "scales": self.eigenvalues(prompt_features, features.shape[0]) / self.beta}

    def probability(self, out_a: dict, out_b: dict) -> torch.Tensor:
        """P(a > b); the scales are read from out_a (both sides share the prompt)."""
        return gpm_probability(out_a["embedding"], out_b["embedding"], out_a["scales"])

    def reward(self, out: dict, direction=None) -> torch.Tensor:
        raise ValueError("a GPM has no scalar reward per response (cyclic preferences admit none); compare pairs")

    def loss(self, chosen: torch.Tensor, rejected: torch.Tensor, prompt_features=None) -> torch.Tensor:
        """Per-example loss on pooled features of the chosen and rejected responses to the same prompts."""
        return gpm_pair_loss(self(chosen, prompt_features), self(rejected, prompt_features), {})


def gpm_pair_loss(out_c: dict, out_r: dict, batch: dict) -> torch.Tensor:
    """The registered `gpm` kind's loss: -log P(chosen > rejected) per pair [B] (times the pair's
    dataset weight when several files train together)."""
    loss = gpm_loss(out_c["embedding"], out_r["embedding"], out_c["scales"])
    return loss * batch["dataset_weight"] if "dataset_weight" in batch else loss
