"""Judges backed by saved preference models: a GPM (compare only) and a PAL model (per-user scores).

Both load the common reward-model folder through rewards.model.load_reward_model (what
`prefalign train-rm kind=gpm|pal` writes, or rewards.model.save_gpm / save_pal).

"preference_model" (arXiv 2410.02197): loads a saved GPM (kind "gpm"). compare()
embeds every distinct (prompt, response) once and every distinct prompt once (for the eigenvalue
gate), then P(a > b) = sigmoid(<R(x) v_a, v_b> / beta): skew-symmetric by construction, so
compare(p, a, b) + compare(p, b, a) = 1 and compare(p, a, a) = 1/2. score() raises: a GPM has no
scalar reward, and cyclic preferences admit none.

"pal" (arXiv 2406.08469): loads a saved PAL model (kind "pal") and scores responses for
ONE user: `user=` a name the model was trained on, or `weights=` K mixture weights (e.g. from
`fit_user`, the few-shot fit of an unseen user). score = r_u(x, y) = -||f(x, y) - a_u(x)||^2 and
compare is the Bradley-Terry link sigmoid(r_a - r_b), which is exactly PAL's P(a > b | u).
"""

from __future__ import annotations

import torch

from prefalign.judges.base import Judge, check_aligned, register_judge
from prefalign.rewards.backbone import render
from prefalign.rewards.model import load_reward_model
from prefalign.rewards.pal import fit_user_weights


class PooledFeatures:
    """Backbone pooled vectors for (prompt, response) rows, each distinct row computed once, batched."""

    def __init__(self, backbone, batch_size: int, device: str):
        self.backbone, self.batch_size, self.device = backbone.to(device).eval(), batch_size, device

    @torch.no_grad()
    def __call__(self, prompts: list, responses: list) -> torch.Tensor:
        keys = [(render(p), render(r)) for p, r in zip(prompts, responses)]
        distinct = list(dict.fromkeys(keys))
        index = {k: i for i, k in enumerate(distinct)}
        chunks = []
        for s in range(0, len(distinct), self.batch_size):
            part = distinct[s:s + self.batch_size]
            enc = self.backbone.encode([p for p, _ in part], [r for _, r in part])
            chunks.append(self.backbone(**{k: t.to(self.device) for k, t in enc.items()}).float().cpu())
        pooled = torch.cat(chunks) if chunks else torch.zeros(0, self.backbone.hidden_size)
        return pooled[torch.tensor([index[k] for k in keys], dtype=torch.long)]

    def prompts(self, prompts: list) -> torch.Tensor:
        """The prompt alone (empty response): what the GPM gate and PAL model B read."""
        return self(prompts, [""] * len(prompts))


@register_judge("preference_model")
class PreferenceModelJudge(Judge):
    def __init__(self, path: str, batch_size: int = 16, device: str = "cpu"):
        super().__init__()
        model = load_reward_model(path, device, kind="gpm")
        self.head = model.head
        self.features = PooledFeatures(model.backbone, batch_size, device)
        self.device = device

    @torch.no_grad()
    def compare(self, prompts: list, a: list, b: list) -> list[float | None]:
        n = check_aligned(prompts, a, b)
        if n == 0:
            return []
        # one call over a + b: a response that appears on both sides is still embedded once
        fa, fb = self.features(list(prompts) * 2, list(a) + list(b)).to(self.device).split(n)
        fx = self.features.prompts(prompts).to(self.device) if self.head.gate else None
        probs = self.head.probability(self.head(fa, fx), self.head(fb, fx)).tolist()
        for p in probs:
            self.stats.record(p)
        return probs


@register_judge("pal")
class PALJudge(Judge):
    def __init__(self, path: str, user: str | None = None, weights: list[float] | None = None,
                 batch_size: int = 16, device: str = "cpu"):
        super().__init__()
        model = load_reward_model(path, device, kind="pal")
        self.head, self.users = model.head, model.head.users
        self.features = PooledFeatures(model.backbone, batch_size, device)
        self.device = device
        if user is not None and weights is not None:
            raise ValueError("pass user= (a trained user's name) or weights= (mixture weights), not both")
        if user is not None:
            if user not in self.users:
                raise ValueError(f"user {user!r} is not one of the model's {len(self.users)} users "
                                 f"(e.g. {self.users[:5]}); fit an unseen user with fit_user()")
            with torch.no_grad():
                self.weights = self.head.user_weights(torch.tensor([self.users.index(user)]))[0]
        elif weights is not None:
            w = torch.tensor(weights, dtype=torch.float32)
            if w.shape != (self.head.K,) or (w < 0).any() or abs(w.sum().item() - 1.0) > 1e-4:
                raise ValueError(f"weights must be {self.head.K} non-negative numbers summing to 1, got {weights}")
            self.weights = w
        else:
            raise ValueError(f"the pal judge scores for one user: pass user= (one of {self.users[:5]}...) or weights=")

    def prompt_features(self, prompts: list):
        return self.features.prompts(prompts).to(self.device) if self.head.mode == "B" else None

    @torch.no_grad()
    def score(self, prompts: list, responses: list) -> list[float | None]:
        if check_aligned(prompts, responses) == 0:
            return []
        feats = self.features(prompts, responses).to(self.device)
        out = self.head.rewards(feats, self.prompt_features(prompts), weights=self.weights.to(self.device)).tolist()
        for r in out:
            self.stats.record(r)
        return out

    def fit_user(self, prompts: list, chosen: list, rejected: list, steps: int = 100, lr: float = 0.2) -> list[float]:
        """Few-shot: fit this judge's user weights to a new user's comparisons (model frozen)."""
        check_aligned(prompts, chosen, rejected)
        with torch.no_grad():
            fc, fr = self.features(prompts, chosen).to(self.device), self.features(prompts, rejected).to(self.device)
            fx = self.prompt_features(prompts)
        self.weights = fit_user_weights(self.head, fc, fr, fx, steps=steps, lr=lr)
        return self.weights.tolist()
