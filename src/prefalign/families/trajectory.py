"""The trajectory family: preferences over segments of (state, action) steps in a tabular MDP.

A segment is scored by one of three things, all [B, K] like summed token log-probs:
  "partial_return": sum_t r(s_t, a_t) of a learned reward (Knox et al.'s partial-return model);
  "regret": sum_t A*_r(s_t, a_t), minus the segment's regret under the learned reward r, with the
      optimal advantages exact by policy iteration on the known transition table (Knox et al.'s
      regret model, their Eq. 4 form, which also holds for stochastic transitions);
  "policy_logp": sum_t log pi(a_t | s_t) of a small policy (GRAPE's trajectory likelihood, so the
      registered `dpo` is GRAPE's TPO loss).
The MDP comes from gymnasium's toy-text environments, whose `P[s][a] = [(p, s', r, done)]` table
gives exact values: terminal transitions lead to one extra absorbing state with reward 0.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prefalign.families.base import FamilyTrainee, family

SCORES = ("partial_return", "regret", "policy_logp")


@dataclass
class TabularMDP:
    """T [S, A, S] transition probabilities and R [S, A] expected reward, float64; the last state
    is absorbing (entered on termination, reward 0). `occupiable` are the states an agent can be in."""

    name: str
    T: torch.Tensor
    R: torch.Tensor
    start: int
    gamma: float
    occupiable: list[int]
    _successors: list | None = field(default=None, repr=False)  # filled by successors() on first use

    @property
    def n_states(self) -> int:
        return self.T.shape[0]

    @property
    def n_actions(self) -> int:
        return self.T.shape[1]


def from_gymnasium(env_id: str, gamma: float = 0.99, **kwargs) -> TabularMDP:
    import gymnasium

    env = gymnasium.make(env_id, **kwargs).unwrapped
    table, n, n_actions = env.P, env.observation_space.n, env.action_space.n
    T = torch.zeros(n + 1, n_actions, n + 1, dtype=torch.float64)
    R = torch.zeros(n + 1, n_actions, dtype=torch.float64)
    for s in range(n):
        for a in range(n_actions):
            for p, s_next, r, done in table[s][a]:
                T[s, a, n if done else int(s_next)] += p
                R[s, a] += p * float(r)
    T[n, :, n] = 1.0
    start = int(env.reset(seed=0)[0])
    # states reachable from the start without terminating: holes and the goal are never occupied
    seen, frontier = {start}, [start]
    while frontier:
        s = frontier.pop()
        for s_next in (T[s, :, :n] > 0).any(0).nonzero().flatten().tolist():
            if s_next not in seen:
                seen.add(s_next)
                frontier.append(s_next)
    return TabularMDP(env_id, T, R, start, gamma, sorted(seen))


def policy_values(mdp: TabularMDP, reward: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """V^pi [S] of a stochastic policy [S, A] under `reward` [S, A]: one linear solve, differentiable."""
    P = torch.einsum("sa,sat->st", policy, mdp.T)
    r = (policy * reward).sum(1)
    eye = torch.eye(mdp.n_states, dtype=mdp.T.dtype)
    return torch.linalg.solve(eye - mdp.gamma * P, r)


def optimal_q(mdp: TabularMDP, reward: torch.Tensor, greedy: torch.Tensor | None = None, max_iter: int = 200):
    """Q* [S, A] and the greedy actions [S] of `reward` [S, A] by exact policy iteration.

    The iteration runs without gradients; Q* is then rebuilt from the optimal policy's linear solve,
    so it is differentiable in the reward with the exact gradient wherever the optimum is unique
    (the envelope theorem). `greedy` warm-starts the iteration (a training step moves r a little).
    """
    rows = torch.arange(mdp.n_states)
    with torch.no_grad():
        r = reward.detach().to(mdp.T.dtype)
        actions = r.argmax(1) if greedy is None else greedy.clone()
        for _ in range(max_iter):
            v = policy_values(mdp, r, torch.nn.functional.one_hot(actions, mdp.n_actions).to(r.dtype))
            q = r + mdp.gamma * mdp.T @ v
            best = q.argmax(1)
            better = q[rows, best] > q[rows, actions] + 1e-9 * (1 + q.abs().max())
            if not better.any():
                break
            actions = torch.where(better, best, actions)
    onehot = torch.nn.functional.one_hot(actions, mdp.n_actions).to(mdp.T.dtype)
    v = policy_values(mdp, reward.to(mdp.T.dtype), onehot)
    return reward.to(mdp.T.dtype) + mdp.gamma * mdp.T @ v, actions


def scaled_return(mdp: TabularMDP, actions: torch.Tensor) -> float:
    """Knox et al.'s mean scaled return of a deterministic policy under the TRUE reward, from the
    start state: (V^pi - V^uniform) / (V* - V^uniform); 1 is optimal, 0 uniform, > 0.9 near-optimal."""
    onehot = torch.nn.functional.one_hot(actions, mdp.n_actions).to(mdp.T.dtype)
    uniform = torch.full_like(onehot, 1.0 / mdp.n_actions)
    v_pi = policy_values(mdp, mdp.R, onehot)[mdp.start]
    v_unif = policy_values(mdp, mdp.R, uniform)[mdp.start]
    q_star, best = optimal_q(mdp, mdp.R)
    v_star = q_star.max(1).values[mdp.start]
    return float((v_pi - v_unif) / (v_star - v_unif))


@dataclass
class SegmentPair:
    """K segments of one comparison, column 0 preferred: states, actions [K, L] (long), mask [K, L]
    (False after termination or past a shorter segment's end)."""

    states: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor

    @property
    def max_len(self) -> int:
        return int(self.mask.sum(1).max())


def successors(mdp: TabularMDP) -> list[list[tuple[list[int], list[float]]]]:
    """Per (s, a): the reachable next states and their probabilities, as Python lists. Sampling an
    episode step by step from these is ~100x faster than a torch call per step."""
    if mdp._successors is None:
        mdp._successors = [[((row > 0).nonzero().flatten().tolist(), row[row > 0].tolist()) for row in mdp.T[s]]
                           for s in range(mdp.n_states)]
    return mdp._successors


def step(mdp: TabularMDP, s: int, a: int, rng: random.Random) -> int:
    states, probs = successors(mdp)[s][a]
    return states[0] if len(states) == 1 else rng.choices(states, weights=probs)[0]


def random_segment(mdp: TabularMDP, length: int, rng: random.Random):
    """A segment of uniformly random actions from a uniformly drawn occupiable state."""
    s = rng.choice(mdp.occupiable)
    states, actions, mask = [], [], []
    absorbing = mdp.n_states - 1
    for _ in range(length):
        a = rng.randrange(mdp.n_actions)
        states.append(s)
        actions.append(a)
        mask.append(s != absorbing)
        s = step(mdp, s, a, rng) if s != absorbing else s
    return states, actions, mask


def rollout(mdp: TabularMDP, policy_logits: torch.Tensor, horizon: int, rng: random.Random):
    """One episode of a softmax policy [S, A] from the start state, cut at `horizon` steps."""
    probs = torch.softmax(policy_logits.detach().to(torch.float64), 1).tolist()
    s, states, actions = mdp.start, [], []
    choices = range(mdp.n_actions)
    while len(states) < horizon and s != mdp.n_states - 1:
        a = rng.choices(choices, weights=probs[s])[0]
        states.append(s)
        actions.append(a)
        s = step(mdp, s, a, rng)
    return states, actions


def true_return(mdp: TabularMDP, states: list[int], actions: list[int]) -> float:
    """Discounted return of the steps taken (expected reward of each (s, a); exact when deterministic)."""
    return sum(mdp.gamma ** t * float(mdp.R[s, a]) for t, (s, a) in enumerate(zip(states, actions)))


def make_pair(segments: list[tuple]) -> SegmentPair:
    """Pad K segments (states, actions[, mask]) to one length; column 0 must be the preferred one."""
    length = max(len(seg[0]) for seg in segments)
    states = torch.zeros(len(segments), length, dtype=torch.long)
    actions = torch.zeros_like(states)
    mask = torch.zeros(len(segments), length, dtype=torch.bool)
    for k, seg in enumerate(segments):
        n = len(seg[0])
        states[k, :n], actions[k, :n] = torch.tensor(seg[0]), torch.tensor(seg[1])
        mask[k, :n] = torch.tensor(seg[2]) if len(seg) > 2 else True
    return SegmentPair(states, actions, mask)


def true_advantages(mdp: TabularMDP) -> torch.Tensor:
    """A*(s, a) [S, A] of the environment's own reward (0 for optimal actions, < 0 otherwise)."""
    q, greedy = optimal_q(mdp, mdp.R)
    return q - q.gather(1, greedy[:, None])


def label_segments(mdp: TabularMDP, n: int, length: int, seed: int, model: str = "regret") -> list[SegmentPair]:
    """n comparisons of random segments, labels drawn from the TRUE preference model:
    P(a > b) = sigmoid(score(a) - score(b)), score = -regret (sum of A*) or the partial return."""
    rng = random.Random(seed)
    table = (true_advantages(mdp) if model == "regret" else mdp.R).tolist()
    pairs = []
    for _ in range(n):
        a, b = random_segment(mdp, length, rng), random_segment(mdp, length, rng)
        score_a, score_b = (sum(table[s][x] for s, x, m in zip(*seg) if m) for seg in (a, b))
        a_wins = rng.random() < 1 / (1 + math.exp(score_b - score_a))
        pairs.append(make_pair([a, b] if a_wins else [b, a]))
    return pairs


class TabularReward(torch.nn.Module):
    """r(s, a) as a table; the absorbing state's reward is fixed at 0 (it is not a choice)."""

    def __init__(self, mdp: TabularMDP):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(mdp.n_states - 1, mdp.n_actions, dtype=torch.float64))

    def table(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat([self.weight, torch.zeros_like(self.weight[:1])])


class MLPReward(torch.nn.Module):
    """r(s, a) from a small MLP on one-hot (state, action) features, evaluated over the whole table."""

    def __init__(self, mdp: TabularMDP, hidden: int = 32, seed: int = 0):
        super().__init__()
        n, a = mdp.n_states - 1, mdp.n_actions
        with torch.random.fork_rng():  # a seeded initialisation that leaves the caller's generator alone
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(n + a, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.net.double()
        self.register_buffer("inputs", torch.cat([torch.eye(n).repeat_interleave(a, 0), torch.eye(a).repeat(n, 1)], 1)
                             .double(), persistent=False)
        self.shape = (n, a)

    def table(self, generator: torch.Generator | None = None) -> torch.Tensor:
        r = self.net(self.inputs).view(*self.shape)
        return torch.cat([r, torch.zeros_like(r[:1])])


class GaussianReward(torch.nn.Module):
    """PEARL's robust reward (arXiv:2306.03615): r(s, a) ~ N(mu, sigma^2), one reparameterised draw
    mu + sigma * eps per step of each segment, and a KL(N(mu, sigma^2) || N(0, 1)) regulariser on
    the steps it scores. Both details are the paper's description, not confirmed code (no code found)."""

    def __init__(self, mdp: TabularMDP):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(mdp.n_states - 1, mdp.n_actions, dtype=torch.float64))
        self.log_sigma = torch.nn.Parameter(torch.full_like(self.mu, -1.0))

    def table(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat([self.mu, torch.zeros_like(self.mu[:1])])

    def step_rewards(self, states: torch.Tensor, actions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mu, sigma = self.padded(self.mu), self.padded(self.log_sigma).exp()
        eps = torch.randn(states.shape, generator=generator, dtype=mu.dtype)
        return mu[states, actions] + sigma[states, actions] * eps

    def kl(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self.padded(self.mu)[states, actions], self.padded(self.log_sigma)[states, actions]
        return 0.5 * (mu ** 2 + (2 * log_sigma).exp() - 1) - log_sigma

    @staticmethod
    def padded(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.zeros_like(x[:1])])


class TabularPolicy(torch.nn.Module):
    """A softmax policy pi(a | s) with one row of logits per state (GRAPE's policy, tabular)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.detach().clone().to(torch.float64))

    def table(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.log_softmax(self.logits, 1)


@family("trajectory")
class TrajectoryFamily:
    """Scores SegmentPair examples as [B, K] (see the module docstring for the three scores)."""

    kinds = ("pairwise",)

    def __init__(self, mdp: TabularMDP, score: str = "partial_return", horizon: int = 50):
        if score not in SCORES:
            raise ValueError(f"trajectory score must be one of {SCORES}, got {score!r}")
        self.mdp, self.score_kind, self.horizon = mdp, score, horizon
        self.greedy = None  # the last optimal policy, warm-starting the next policy iteration

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        pairs = [examples[i] for i in indices]
        for i, p in zip(indices, pairs):  # an index out of the table would fail deep inside the scorer
            for name, value, size in (("states", p.states, self.mdp.n_states), ("actions", p.actions, self.mdp.n_actions)):
                if value.numel() and (value.min() < 0 or value.max() >= size):
                    raise ValueError(f"{split} comparison {i}: {name} must lie in [0, {size}) for "
                                     f"{self.mdp.name}, got {value.tolist()}")
        length = max(p.states.shape[1] for p in pairs)
        pad = lambda t: torch.nn.functional.pad(t, (0, length - t.shape[1]))  # noqa: E731
        return {"states": torch.stack([pad(p.states) for p in pairs]),
                "actions": torch.stack([pad(p.actions) for p in pairs]),
                "attention_mask": torch.stack([pad(p.mask) for p in pairs]).long()}

    def step_scores(self, module: torch.nn.Module, batch: dict, generator_seed: int) -> torch.Tensor:
        """[B, K, L] per-step terms whose masked sum is the score."""
        states, actions = batch["states"], batch["actions"]
        g = torch.Generator().manual_seed(generator_seed)
        if self.score_kind == "regret":
            q, self.greedy = optimal_q(self.mdp, module.table(), self.greedy)
            advantage = q - q.gather(1, self.greedy[:, None])
            return advantage[states, actions]
        if isinstance(module, GaussianReward):
            return module.step_rewards(states, actions, g)
        return module.table(g)[states, actions]

    def score(self, module: torch.nn.Module, batch: dict, generator_seed: int) -> torch.Tensor:
        mask = batch["attention_mask"].to(torch.float64)
        return (self.step_scores(module, batch, generator_seed) * mask).sum(-1)

    def regularizer(self, module: torch.nn.Module, batch: dict) -> torch.Tensor:
        """[B] PEARL's KL summed over the scored steps of both segments; 0 for the other models."""
        if not isinstance(module, GaussianReward):
            return torch.zeros(batch["states"].shape[0], dtype=torch.float64)
        mask = batch["attention_mask"].to(torch.float64)
        return (module.kl(batch["states"], batch["actions"]) * mask).sum((1, 2))

    def sample(self, module: torch.nn.Module, n: int, seed: int) -> list:
        """n episodes (states, actions) of the policy (a TabularPolicy) from the start state."""
        if not isinstance(module, TabularPolicy):
            raise ValueError(f"only a policy samples episodes; got a {type(module).__name__}")
        rng = random.Random(seed)
        return [rollout(self.mdp, module.logits, self.horizon, rng) for _ in range(n)]

    def save(self, module: torch.nn.Module, folder: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
                  str(Path(folder) / "model.safetensors"))

    def load(self, module: torch.nn.Module, folder: Path) -> None:
        module.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))


class RewardTrainee(FamilyTrainee):
    """FamilyTrainee plus PEARL's KL regulariser (kl_weight * KL per comparison) for a Gaussian reward."""

    def __init__(self, accelerator, fam: TrajectoryFamily, module, objective, objective_params: dict,
                 kl_weight: float = 0.0):
        super().__init__(accelerator, fam, module, None, objective, objective_params)
        self.kl_weight = kl_weight

    def loss(self, batch: dict):
        per_example, metrics = super().loss(batch)
        if self.kl_weight:
            per_example = per_example + self.kl_weight * self.family.regularizer(self.module, batch)
        return per_example, metrics


class NoAccelerator:
    """What FamilyTrainee needs of an accelerator when reward learning runs outside the loop."""

    def unwrap_model(self, module):
        return module


def fit_reward(fam: TrajectoryFamily, module: torch.nn.Module, pairs: list[SegmentPair], objective,
               steps: int = 300, lr: float = 0.5, kl_weight: float = 0.0, seed: int = 0) -> float:
    """Full-batch Adam on all comparisons (Knox et al.: Adam, lr 0.5), keeping the lowest-loss
    weights as their regret model does. Returns that loss; `module` holds those weights after."""
    trainee = RewardTrainee(NoAccelerator(), fam, module, objective, {}, kl_weight)
    batch = fam.make_batch(pairs, list(range(len(pairs))), "train")
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    torch.manual_seed(seed)  # FamilyTrainee draws each step's scoring seed from torch's generator
    best, best_state = float("inf"), None
    for _ in range(steps):
        loss = trainee.loss(batch)[0].mean()
        if loss.item() < best:
            best, best_state = loss.item(), {k: v.detach().clone() for k, v in module.state_dict().items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.load_state_dict(best_state)
    return best
