"""The generative-recommender family (OneRec, arXiv:2502.18965): items are the tokens of a small causal
model that reads a user's history and writes a session of items.

Sequence: [BOS, h_1 .. h_n, s_1 .. s_m], item i being token i + OFFSET; histories of different lengths are
left-padded. At every position the next-item distribution is the model's softmax restricted to items not
yet in the sequence (no special token, no repeat): sampling, beam search, pretraining and scoring all use
that one distribution, so a session's score, the summed log-likelihood of s_1..s_m given the history,
is exactly the log-probability the sampler drew it with. OneRec generates semantic IDs of an
encoder-decoder MoE; one token per item and a decoder-only Llama are the CPU-sized stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from prefalign.families.base import family
from prefalign.judges.base import Judge
from prefalign.online.pairing import Candidate, label_round
from prefalign.train.loop import LoopParts, LoopSettings, train_loop

PAD, BOS, OFFSET = 0, 1, 2


def tiny_llama(n_items: int, hidden: int = 64, layers: int = 2, heads: int = 4, max_len: int = 64, seed: int = 0):
    """A LlamaForCausalLM built from a config (nothing downloaded); vocabulary = items + PAD + BOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=n_items + OFFSET, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_len, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=None,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS] + the row's item tokens (item + OFFSET), left-padded: (ids [N, T], attention_mask [N, T])."""
    width = 1 + max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, width - len(row) - 1:] = torch.tensor([BOS] + [item + OFFSET for item in row], dtype=torch.long)
        mask[n, width - len(row) - 1:] = 1
    return ids, mask


def masked_logps(model, ids: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
    """log P(next item | prefix) restricted to unseen items: [N, T, V] (or [N, V] for the last position).
    Left padding keeps every row's last token at T-1; positions count from each row's first real token."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    if last_only:
        logits = logits[:, -1]
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, ids, True)  # every token of the row
    else:
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(2, ids.unsqueeze(-1), True)
        seen = seen.cummax(1).values  # at position t: every token at 0..t
    seen[..., :OFFSET] = True  # PAD and BOS are never an item
    return torch.log_softmax(logits.masked_fill(seen, float("-inf")), -1)


def token_logps(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T-1]: log-prob of token t+1 under the restricted distribution at t; 0 where t or t+1 is padding
    (BOS, the first real token, is predicted from padding: no item to score there)."""
    logps = masked_logps(model, ids, mask)[:, :-1].gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    real = mask[:, 1:].bool() & mask[:, :-1].bool()
    return torch.where(real, logps, torch.zeros_like(logps))


def session_logps(model, histories: list[list[int]], sessions: torch.Tensor) -> torch.Tensor:
    """[N] summed log-likelihood of sessions [N, m] (item ids) given each row's history."""
    ids, mask = left_pad([list(h) + s for h, s in zip(histories, sessions.tolist())])
    device = next(model.parameters()).device
    m = sessions.shape[1]
    return token_logps(model, ids.to(device), mask.to(device))[:, -m:].sum(1)


@torch.no_grad()
def sample_sessions(model, histories: list[list[int]], n: int, length: int, seed: int,
                    temperature: float = 1.0, chunk: int = 512) -> torch.Tensor:
    """[U, n, length] item ids: n sessions per history drawn item by item, seeded (a local generator)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    rows = [list(h) for h in histories for _ in range(n)]
    out = []
    for start in range(0, len(rows), chunk):
        ids, mask = left_pad(rows[start:start + chunk])
        ids, mask = ids.to(device), mask.to(device)
        for _ in range(length):
            logps = masked_logps(model, ids, mask, last_only=True)
            nxt = torch.multinomial(torch.softmax(logps / temperature, -1), 1, generator=g)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        out.append(ids[:, -length:] - OFFSET)
    return torch.cat(out).view(len(histories), n, length).cpu()


@torch.no_grad()
def beam_search(model, histories: list[list[int]], beams: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `beams` highest-likelihood sessions per history, best first: (items [U, beams, length],
    summed log-likelihoods [U, beams]). Exact for length 1; the usual left-to-right beam otherwise."""
    device = next(model.parameters()).device
    n_users = len(histories)
    ids, mask = left_pad([list(h) for h in histories])
    ids, mask = ids.to(device).unsqueeze(1), mask.to(device).unsqueeze(1)  # [U, b, T]
    scores = torch.zeros(n_users, 1, device=device)
    for _ in range(length):
        b, width = ids.shape[1], ids.shape[2]
        logps = masked_logps(model, ids.reshape(-1, width), mask.reshape(-1, width), last_only=True)
        vocab = logps.shape[-1]
        total = (scores.unsqueeze(-1) + logps.view(n_users, b, vocab)).view(n_users, -1)
        scores, flat = total.topk(min(beams, total.shape[1]), dim=1)
        parent, token = flat // vocab, flat % vocab
        pick = parent.unsqueeze(-1).expand(-1, -1, width)
        ids = torch.cat([ids.gather(1, pick), token.unsqueeze(-1)], 2)
        mask = torch.cat([mask.gather(1, pick), torch.ones_like(token).unsqueeze(-1)], 2)
    if not torch.isfinite(scores).all():
        raise ValueError(f"{beams} beams exceed the distinct sessions of {length} unseen items some history allows")
    return (ids[:, :, -length:] - OFFSET).cpu(), scores.cpu()


@torch.no_grad()
def recall_at_k(model, histories: list[list[int]], held_out: list[list[int]], k: int = 10,
                chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per user: (hit: the first held-out item is among the top k next items, NDCG@k of that item).
    Items already in the history are excluded from the ranking (they cannot be recommended again)."""
    device = next(model.parameters()).device
    hits, gains = [], []
    for start in range(0, len(histories), chunk):
        ids, mask = left_pad([list(h) for h in histories[start:start + chunk]])
        logps = masked_logps(model, ids.to(device), mask.to(device), last_only=True)[:, OFFSET:].cpu()
        target = torch.tensor([h[0] for h in held_out[start:start + chunk]])
        rank = (logps > logps.gather(1, target[:, None])).sum(1)  # 0 = ranked first
        hits.append((rank < k).float())
        gains.append(torch.where(rank < k, 1 / torch.log2(rank.float() + 2), torch.zeros_like(rank, dtype=torch.float)))
    return torch.cat(hits), torch.cat(gains)


@dataclass
class HistoryExample:
    """One user's training history: the next-item (pretraining) loss reads every position."""

    items: list[int]

    @property
    def max_len(self) -> int:
        return len(self.items) + 1


@dataclass
class SessionPair:
    """A preference pair for DPO: two sessions for one user's history, chosen first."""

    user: int
    history: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def max_len(self) -> int:
        return len(self.history) + 1 + max(len(self.chosen), len(self.rejected))


class NextItemTrainee:
    """Next-item prediction as the loop's Trainee (pretraining, and the next-token baseline):
    per user, the mean negative log-likelihood of each history item given the items before it."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        ids, mask = left_pad([examples[i].items for i in indices])
        return {"ids": ids, "attention_mask": mask}

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        logps = token_logps(self.module, batch["ids"], batch["attention_mask"])
        per_example = -logps.sum(1) / (batch["attention_mask"].sum(1) - 1)  # items per row (BOS is no item)
        return per_example, {"loss": (per_example.detach().sum(), float(len(per_example)))}

    def save(self, folder: Path) -> None:
        save_weights(self.module, folder)

    def load(self, folder: Path) -> None:
        load_weights(self.module, folder)


@family("recommender")
class RecommenderFamily:
    """Scores [B, K] sessions of each user as their summed restricted log-likelihoods (module docstring)."""

    kinds = ("pairwise",)

    def __init__(self, histories: list[list[int]] | None = None, session_len: int = 5):
        self.histories, self.session_len = histories or [], session_len

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        pairs = [examples[i] for i in indices]
        lengths = {len(s) for p in pairs for s in (p.chosen, p.rejected)}
        if len(lengths) != 1:
            raise ValueError(f"sessions of one batch must have one length; users {[p.user for p in pairs]} "
                             f"have lengths {sorted(lengths)}")
        rows = [p.history + s for p in pairs for s in (p.chosen, p.rejected)]
        ids, mask = left_pad(rows)
        return {"ids": ids.view(len(pairs), 2, -1), "attention_mask": mask.view(len(pairs), 2, -1),
                "session_len": torch.tensor(lengths.pop())}

    def score(self, module: torch.nn.Module, batch: dict, generator_seed: int) -> torch.Tensor:
        # deterministic: the seed (shared by policy and reference) has nothing to draw here
        b, k, width = batch["ids"].shape
        m = int(batch["session_len"])
        logps = token_logps(module, batch["ids"].view(b * k, width), batch["attention_mask"].view(b * k, width))
        return logps[:, -m:].sum(1).view(b, k)

    def sample(self, module: torch.nn.Module, n: int, seed: int) -> list:
        """n sessions per user of this family's histories: a list (per user) of n item lists."""
        return sample_sessions(module, self.histories, n, self.session_len, seed).tolist()

    def save(self, module: torch.nn.Module, folder: Path) -> None:
        save_weights(module, folder)

    def load(self, module: torch.nn.Module, folder: Path) -> None:
        load_weights(module, folder)


def save_weights(module: torch.nn.Module, folder: Path) -> None:
    """model.safetensors and the config it was built from (tiny_llama's), into an existing folder."""
    save_model(module, str(Path(folder) / "model.safetensors"))
    module.config.to_json_file(str(Path(folder) / "config.json"))


def load_weights(module: torch.nn.Module, folder: Path) -> None:
    load_model(module, str(Path(folder) / "model.safetensors"))


def train_steps(acc, trainee, examples: list, steps: int, out_dir: Path, lr: float, batch_size: int = 32,
                seed: int = 0, weight_decay: float = 0.0) -> dict:
    """`steps` optimizer steps of the one training loop (AdamW, constant rate, no checkpoints)."""
    optimizer = torch.optim.AdamW([p for p in trainee.module.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = LoopSettings(Path(out_dir), steps, min(batch_size, len(examples)), 1, 1.0, seed, save_steps=0,
                            keep_last=1, eval_steps=0, eval_batch_size=batch_size, logging_steps=max(1, steps),
                            group_by_length=False, resume=False, progress=False)
    return train_loop(LoopParts(acc, trainee, optimizer, scheduler, examples, [], []), settings)


class SessionRewardJudge(Judge):
    """A reward model of sessions as a scoring judge: prompt = user id, response = (text, item ids)."""

    name = "session-reward"

    def __init__(self, reward_model):
        super().__init__()
        self.reward_model = reward_model

    def score(self, prompts: list, responses: list) -> list[float | None]:
        sessions = torch.tensor([ids for _, ids in responses])
        values = self.reward_model.session_reward(torch.tensor(prompts), sessions).tolist()
        for v in values:
            self.stats.record(v, "returned None")
        return values


def beam_pairs(model, reward_model, users: list[int], histories: list[list[int]], beams: int, length: int,
               seed: int, round: int) -> tuple[list[SessionPair], dict]:
    """OneRec's preference pairs: the policy's beams per user, ranked by the reward model, best vs worst
    (the online loop's best_vs_worst rule; users whose beams all tie are dropped and counted)."""
    items, _ = beam_search(model, histories, beams, length)
    groups = [[Candidate(["policy", k], " ".join(map(str, s)), s) for k, s in enumerate(row)] for row in items.tolist()]
    specs, counts = label_round("best_vs_worst", users, {"main": groups}, SessionRewardJudge(reward_model), 0,
                                seed, round)
    pairs = [SessionPair(users[s["prompt"]], list(histories[s["prompt"]]), groups[s["prompt"]][s["rows"][0][1]].ids,
                         groups[s["prompt"]][s["rows"][1][1]].ids) for s in specs]
    return pairs, counts.as_dict()
