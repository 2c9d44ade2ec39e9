"""PAL pluralistic reward model: arXiv 2406.08469 (Chen et al., "PAL: Pluralistic Alignment Framework").

Ideal-point model (Coombs): user u prefers the response whose embedding lies closer to u's ideal
point. PAL makes the ideal points of a whole population a mixture of K shared prototypes:

    a_u(x) = sum_k w_uk p_k(x),   w_u = softmax(theta_u) in the simplex,
    r_u(x, y) = -|| f(x, y) - a_u(x) ||^2,
    P(y1 > y2 | u, x) = sigmoid(r_u(x, y1) - r_u(x, y2)),   loss = -log P(chosen > rejected | u).

Two forms, as in the paper: Model A ("mode='A'") has prototypes that are fixed points p_k in the
latent space (every prompt shares them); Model B ("mode='B'") makes the prototypes functions of
the prompt, p_k(x) = g_k(prompt features), which is what prompt-conditioned text preferences need
and the form used here by default (the paper's language experiments use it as I read them; its
public text I could read does not make clear which variant each table row is). f and g are a
linear map or a one-hidden-layer MLP on the frozen or trainable backbone's pooled features (the
paper trains small MLPs on a foundation model's penultimate-layer features).
Departure: the paper's distance may carry a learned scale; here the squared Euclidean distance
enters the sigmoid as is (f and g can learn any scale themselves).

Unseen users: `fit_user_weights` learns only theta (K numbers) from a few of the new user's
comparisons with f, g and every other user frozen; theta = 0 (uniform weights, the population's
average ideal point) is the zero-shot starting point.

Interface for the reward-model registry (train-rm / eval-rm):
    head = PALHead(hidden_size, n_users, n_prototypes=2, dim=16, mode="B", mlp_hidden=0)
    r = head.rewards(features [N, H], prompt_features [N, H] | None, user_ids [N] | weights [N, K]) -> [N]
    head.loss(chosen [N, H], rejected [N, H], prompt_features, user_ids) -> per_example [N]
  features: RewardBackbone(prompt, response) pooled; prompt_features: the backbone on (prompt, "")
  (mode B only). Registered as reward kind "pal": `prefalign train-rm kind=pal` reads a `user_id`
  field per pair row (data.user_field; str or int, validated in rewards/data.py), maps the names of
  all loaded users (train and held-out: a user seen only in held-out data keeps the untrained,
  uniform weights, PAL's zero-shot start) to 0..n_users-1, and stores them as head param "users".
  Saved in the common reward-model folder (rewards/model.py), read back by load_reward_model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.rewards.gpm import projection


def ideal_points(prototypes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """a = sum_k w_k p_k. prototypes [K, d] (Model A) or [N, K, d] (Model B); weights [N, K] -> [N, d]."""
    if prototypes.dim() == 2:
        return weights @ prototypes
    return torch.einsum("nk,nkd->nd", weights, prototypes)


def pal_reward(items: torch.Tensor, ideal: torch.Tensor) -> torch.Tensor:
    """r = -||f(x, y) - a_u(x)||^2 per row: items, ideal [N, d] -> [N]."""
    return -((items - ideal) ** 2).sum(-1)


def pal_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_u(chosen) - r_u(rejected)) per example [N]."""
    return -F.logsigmoid(reward_chosen - reward_rejected)


class PALHead(torch.nn.Module):
    """Reward-kind interface (rewards/heads.py): forward(features, prompt_features, user) ->
    {"reward": r_u [N]}; probability = sigmoid(r_a - r_b) (PAL's P(a > b | u)). `users` names the
    n_users rows of user weights (default "0".."n_users-1"); they are saved in reward_model.json."""

    reads = "pooled"
    scalar = True
    per_user = True  # train-rm reads a user id per pair row and fills n_users / users from the data

    def __init__(self, hidden_size: int, n_users: int, n_prototypes: int = 2, dim: int = 16,
                 mode: str = "B", mlp_hidden: int = 0, users: list[str] | None = None):
        super().__init__()
        if mode not in ("A", "B"):
            raise ValueError(f"PAL mode must be 'A' (fixed prototypes) or 'B' (prompt-dependent), got {mode!r}")
        if n_prototypes < 1 or n_users < 1:
            raise ValueError(f"PAL needs n_prototypes >= 1 and n_users >= 1, got {n_prototypes}, {n_users}")
        users = [str(u) for u in users] if users is not None else [str(i) for i in range(n_users)]
        if len(users) != n_users or len(set(users)) != n_users:
            raise ValueError(f"{len(users)} user names ({len(set(users))} distinct) for a head with {n_users} users")
        self.users = users
        self.inputs = ("user",) + (("prompt_features",) if mode == "B" else ())
        self.params = {"n_users": n_users, "n_prototypes": n_prototypes, "dim": dim, "mode": mode,
                       "mlp_hidden": mlp_hidden, "users": users}
        self.mode, self.K, self.dim = mode, n_prototypes, dim
        self.item = projection(hidden_size, dim, mlp_hidden)
        if mode == "A":
            self.prototypes = torch.nn.Parameter(torch.randn(n_prototypes, dim))
        else:
            self.prototype_map = projection(hidden_size, n_prototypes * dim, mlp_hidden)
        # zeros: every user starts at the population's average ideal point
        self.user_logits = torch.nn.Parameter(torch.zeros(n_users, n_prototypes))

    def prototype_points(self, prompt_features: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "A":
            return self.prototypes
        if prompt_features is None:
            raise ValueError("PAL model B needs prompt_features: the backbone's pooled vector for (prompt, '')")
        return self.prototype_map(prompt_features).unflatten(-1, (self.K, self.dim))

    def user_weights(self, user_ids: torch.Tensor) -> torch.Tensor:
        if user_ids.numel() and (user_ids.min() < 0 or user_ids.max() >= self.user_logits.shape[0]):
            raise ValueError(f"user ids must lie in 0..{self.user_logits.shape[0] - 1}; got "
                             f"{user_ids.min().item()}..{user_ids.max().item()} (fit unseen users with fit_user_weights)")
        return torch.softmax(self.user_logits[user_ids], dim=-1)

    def rewards(self, features, prompt_features=None, user_ids=None, weights=None) -> torch.Tensor:
        """r_u(x, y) [N] for known users (user_ids [N]) or explicit mixture weights [N, K] / [K]."""
        if (user_ids is None) == (weights is None):
            raise ValueError("pass exactly one of user_ids (known users) or weights (mixture weights)")
        if weights is None:
            weights = self.user_weights(user_ids)
        weights = weights.expand(features.shape[0], self.K)
        ideal = ideal_points(self.prototype_points(prompt_features), weights)
        return pal_reward(self.item(features), ideal)

    def loss(self, chosen, rejected, prompt_features=None, user_ids=None, weights=None) -> torch.Tensor:
        return pal_loss(self.rewards(chosen, prompt_features, user_ids, weights),
                        self.rewards(rejected, prompt_features, user_ids, weights))

    def user_indices(self, names: list) -> torch.Tensor:
        """[N] row indices of user names (as str); an unknown name is an error naming it."""
        index = {u: i for i, u in enumerate(self.users)}
        unknown = sorted({str(n) for n in names} - set(index))
        if unknown:
            raise ValueError(f"users {unknown[:5]} are not among this PAL model's {len(self.users)} users "
                             f"(e.g. {self.users[:5]}); fit an unseen user with fit_user_weights")
        return torch.tensor([index[str(n)] for n in names], dtype=torch.long)

    def forward(self, features, prompt_features=None, user=None) -> dict:
        return {"reward": self.rewards(features, prompt_features, user_ids=user)}

    def reward(self, out: dict, direction=None) -> torch.Tensor:
        return out["reward"]

    def probability(self, out_a: dict, out_b: dict) -> torch.Tensor:
        return torch.sigmoid(out_a["reward"] - out_b["reward"])


def pal_pair_loss(out_c: dict, out_r: dict, batch: dict) -> torch.Tensor:
    """The registered `pal` kind's loss: -log sigmoid(r_u(chosen) - r_u(rejected)) per pair [B]
    (times the pair's dataset weight when several files train together)."""
    loss = pal_loss(out_c["reward"], out_r["reward"])
    return loss * batch["dataset_weight"] if "dataset_weight" in batch else loss


def fit_user_weights(head: PALHead, chosen: torch.Tensor, rejected: torch.Tensor, prompt_features=None,
                     steps: int = 100, lr: float = 0.2) -> torch.Tensor:
    """Few-shot fit of an unseen user's mixture weights [K] from their comparisons (chosen/rejected
    pooled features [n, H]); the head stays frozen (its parameters get no gradient and are unchanged)."""
    theta = torch.zeros(head.K, device=chosen.device, requires_grad=True)
    if chosen.shape[0] == 0:
        return torch.softmax(theta.detach(), -1)
    with torch.no_grad():  # f(x, y) and p_k(x) are fixed: compute them once
        items_c, items_r = head.item(chosen), head.item(rejected)
        protos = head.prototype_points(prompt_features)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        w = torch.softmax(theta, -1).expand(chosen.shape[0], head.K)
        ideal = ideal_points(protos, w)
        pal_loss(pal_reward(items_c, ideal), pal_reward(items_r, ideal)).mean().backward()
        opt.step()
    return torch.softmax(theta.detach(), -1)
