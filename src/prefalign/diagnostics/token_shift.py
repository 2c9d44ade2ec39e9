"""Token distribution shift between a base model and its aligned version.

Lin et al., "The Unlocking Spell on Base LLMs: Rethinking Alignment via In-Context Learning"
(URIAL), arXiv:2312.01552, section 2. The aligned model answers each prompt by greedy
decoding, o = (o_1, ..., o_T). At each position t the base model reads the same context
(prompt, o_<t) and ranks its vocabulary; eta_t is the rank of o_t there. A position is

    unshifted  eta_t = 1        (the base model would have chosen the same token)
    marginal   eta_t in {2, 3}
    shifted    eta_t > 3

The paper finds few shifted positions, mostly stylistic tokens, mostly early in the answer.
Reported here: the shares of each kind, the share of each kind at each response position,
and the tokens most often shifted (with how often each occurs at all).

Where this departs from the paper: ranks count the tokens with a strictly larger base logit,
plus one (a tie with the top token counts as rank 1); the EOS that ends an answer is a
position like any other. Both models must share one tokenizer (checked by vocabulary size
and by the tokenizer the caller passes).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from prefalign.models.generation import GenerateSettings, generate_batch
from prefalign.logps import chunk_rows, response_forward, row_logits

KINDS = ("unshifted", "marginal", "shifted")


def token_ranks(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[M, V] logits, [M] token ids -> [M] rank of each token (1 = the top token)."""
    picked = logits.gather(1, tokens[:, None])
    return (logits > picked).sum(1) + 1


def shift_kind(ranks: torch.Tensor) -> torch.Tensor:
    """0 unshifted (rank 1), 1 marginal (rank 2-3), 2 shifted (rank > 3)."""
    return (ranks > 1).long() + (ranks > 3).long()


def summarise_shift(ranks: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor, decode,
                    top: int = 20) -> dict:
    """Shares, per-position shares and the most often shifted tokens from [M] ranks, positions (0-based) and ids."""
    if ranks.numel() == 0:
        raise ValueError("no response positions to analyse (every answer was empty)")
    kind = shift_kind(ranks)
    counts = torch.bincount(kind, minlength=3)
    by_pos = torch.zeros(int(positions.max()) + 1, 3, dtype=torch.long)
    by_pos.index_put_((positions, kind), torch.ones_like(kind), accumulate=True)
    per_position = [{"position": p, "count": int(c.sum()), **{k: float(c[i] / c.sum()) for i, k in enumerate(KINDS)}}
                    for p, c in enumerate(by_pos) if c.sum() > 0]
    occurrences = Counter(tokens.tolist())
    shifted = Counter(tokens[kind == 2].tolist())
    most = [{"token": decode(t), "id": t, "shifted": n, "occurrences": occurrences[t]}
            for t, n in shifted.most_common(top)]
    return {"positions": int(ranks.numel()), **{f"{k}_share": float(counts[i] / ranks.numel())
                                                for i, k in enumerate(KINDS)},
            "counts": {k: int(counts[i]) for i, k in enumerate(KINDS)}, "mean_base_rank": float(ranks.double().mean()),
            "per_position": per_position, "most_shifted": most}


@torch.no_grad()
def base_ranks_of(base, ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor):
    """The base model's rank [M] of every response token, with its position in the response [M] and id [M]."""
    fwd = response_forward(base, ids, attention_mask, response_mask, "lean")
    targets = ids.reshape(-1).index_select(0, fwd.index + 1)
    chunk = chunk_rows(fwd.rows.shape[-1] if fwd.head is None else fwd.head.shape[0])
    ranks = torch.cat([token_ranks(row_logits(fwd.rows[s:s + chunk], fwd.head, torch.float32),
                                   targets[s:s + chunk]) for s in range(0, targets.numel(), chunk)])
    # the position of a response token counts from the row's first response token
    width = ids.shape[1]
    first = torch.where(response_mask.any(1), response_mask.long().argmax(1), torch.zeros_like(ids[:, 0]))
    flat = fwd.index + 1
    positions = flat % width - first[torch.div(flat, width, rounding_mode="floor")]
    return ranks.cpu(), positions.cpu(), targets.cpu()


@torch.no_grad()
def token_shift(aligned, base, tokenizer, prompts: list, max_new_tokens: int = 64, batch_size: int = 8,
                top: int = 20, max_prompt_tokens: int = 512) -> dict:
    """URIAL's token distribution shift of `aligned` (greedy answers) against `base` on `prompts`."""
    v_aligned, v_base = aligned.get_output_embeddings().weight.shape[0], base.get_output_embeddings().weight.shape[0]
    if v_aligned != v_base:
        raise ValueError(f"aligned and base models must share a tokenizer; their vocabularies differ ({v_aligned} "
                         f"vs {v_base})")
    if not prompts:
        raise ValueError("token_shift needs at least one prompt")
    settings = GenerateSettings(max_new_tokens=max_new_tokens, do_sample=False, max_prompt_tokens=max_prompt_tokens)
    device = next(base.parameters()).device
    was = aligned.training, base.training
    aligned.eval()
    base.eval()
    parts = []
    for s in range(0, len(prompts), batch_size):
        b = generate_batch(aligned, tokenizer, prompts[s:s + batch_size], settings)
        parts.append(base_ranks_of(base, b.ids.to(device), b.attention_mask.to(device), b.response_mask.to(device)))
    aligned.train(was[0])
    base.train(was[1])
    ranks, positions, tokens = (torch.cat(x) for x in zip(*parts))
    result = summarise_shift(ranks, positions, tokens, lambda t: tokenizer.decode([t]), top)
    result["prompts"] = len(prompts)
    return result


def plot_token_shift(result: dict, out_png: Path, title: str = "") -> Path:
    """Left: the share of each kind at each response position. Right: the most often shifted tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = result["per_position"]
    pos = [r["position"] for r in rows]
    bottom = [0.0] * len(rows)
    for kind, color in zip(KINDS, ("tab:green", "tab:orange", "tab:red")):
        vals = [r[kind] for r in rows]
        left.bar(pos, vals, bottom=bottom, color=color, width=1.0, label=f"{kind} ({result[kind + '_share']:.1%})")
        bottom = [b + v for b, v in zip(bottom, vals)]
    left.set_xlabel("position in the aligned answer")
    left.set_ylabel("share of positions")
    left.set_ylim(0, 1.18)  # headroom: the legend sits above the bars, never on them
    left.legend(fontsize=8, loc="upper center", ncol=3)
    most = result["most_shifted"][:15][::-1]
    right.barh([repr(m["token"]) for m in most], [m["shifted"] for m in most], color="tab:red")
    right.set_xlabel("times shifted (rank > 3 under the base model)")
    right.tick_params(axis="y", labelsize=7)
    fig.suptitle(title or "token distribution shift (URIAL, arXiv:2312.01552)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
