"""Logits -> per-token -> per-sequence log-probs, without full-vocabulary tensors for the batch.

The standard path (model(...).logits, then log_softmax, then gather) holds at least two
[N, T, V] float32 tensors, and autograd keeps one for backward: this is where DPO runs out of
memory while SFT fits (trl#3168, trl#2452). Here the decoder's hidden states are taken only at
positions whose next token is a response token, and the output projection, log-sum-exp and
target gather run on chunks of those rows inside one autograd function that recomputes each
chunk's logits in backward instead of storing them. Peak extra memory is one [chunk, V] block.
The full-vocabulary token KL against a reference (SparsePO) works the same way: both models'
rows at response positions only, a chunk of rows at a time, recomputed in backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from prefalign.packing import Packed, model_inputs

# Config attributes that rescale or cap logits after the output projection. Models that set
# any of them take the standard (full-logits) path, which applies them inside the model.
LOGIT_TRANSFORM_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] per row, computed and differentiated in chunks.

    `keep_elements`: when gradients are wanted and all M x V probabilities fit in this many
    elements, forward keeps them for backward, which then skips recomputing the logits (one of
    the head's four matrix products, and a softmax). With a small vocabulary the head is a large
    share of the step (40% of a token's FLOPs on the 8k-vocabulary benchmark model) and the kept
    block is small; with a 49k vocabulary the block would cost more memory than it saves time.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                keep_elements: int = 0):
        # float32 at least (log-sum-exp over a large vocabulary in bf16 loses the answer)
        work = torch.promote_types(hidden.dtype, torch.float32)
        out = torch.empty(hidden.shape[0], dtype=work, device=hidden.device)
        keep = any(ctx.needs_input_grad[:2]) and hidden.shape[0] * weight.shape[0] <= keep_elements
        probs = torch.empty((hidden.shape[0], weight.shape[0]), dtype=work, device=hidden.device) if keep else None
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start:start + chunk] @ weight.T).to(work)
            picked = logits.gather(1, targets[start:start + chunk, None]).squeeze(1)
            lse = torch.logsumexp(logits, dim=1)
            out[start:start + chunk] = picked - lse
            if keep:
                torch.exp(logits.sub_(lse[:, None]), out=probs[start:start + chunk])
        ctx.save_for_backward(hidden, weight, targets, probs)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets, probs = ctx.saved_tensors
        chunk = ctx.chunk
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        work = torch.promote_types(hidden.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=work, device=weight.device) if ctx.needs_input_grad[1] else None
        rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            g_out = grad_out[start:start + chunk].to(work)
            # d logp[t] / d logits = onehot(t) - softmax(logits), scaled by the incoming grad.
            if probs is None:
                grad_logits = torch.softmax((h @ weight.T).to(work), dim=1).mul_(-g_out[:, None])
            else:
                grad_logits = probs[start:start + chunk].mul(-g_out[:, None])
            grad_logits[rows[: h.shape[0]], targets[start:start + chunk]] += g_out
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.to(work).T @ h.to(work)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


# Probabilities ChunkedTokenLogps may keep for backward: 2^23 float32 elements is 32 MiB, about a
# micro-batch's response positions on an 8k vocabulary; a 49k one recomputes instead.
KEEP_PROBS_ELEMENTS = 1 << 23


def chunk_rows(vocab_size: int, budget_elements: int = 1 << 23) -> int:
    """Rows per chunk so that one [rows, V] float32 block stays near 32 MiB."""
    return max(16, budget_elements // max(1, vocab_size))


def lean_path_supported(model: torch.nn.Module) -> bool:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return False
    config = getattr(model, "config", None)
    return not any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORM_ATTRS)


class ResponseForward(NamedTuple):
    """One forward of a model over a batch, kept at the M positions that predict response tokens.

    token_logps: [N, T] log-prob of each response token (0 elsewhere), as `token_logps` returns.
    rows:        [M, H] final hidden states (lean path) or [M, V] logits (full path) at those
                 positions, in the order of `hidden[:, :-1][target_mask]`.
    head:        [V, H] output-head weight that turns rows into logits; None when rows are logits.
    layers:      [L, M, H] every layer's output at those positions (HF's hidden_states[1:]), or None.
    target_mask: [N, T - 1] bool, True where position t predicts response token t + 1.
    index:       [M] those positions as flat indices n * T + t into the [N, T] grid.
    """

    token_logps: torch.Tensor
    rows: torch.Tensor
    head: torch.Tensor | None
    layers: torch.Tensor | None
    target_mask: torch.Tensor
    index: torch.Tensor


def predicting_index(target_mask: torch.Tensor) -> torch.Tensor:
    """[M] flat indices n * T + t of the True entries of target_mask [N, T - 1] in an [N, T] grid.

    collate() computes this on the host, where the masks are built: boolean indexing of a GPU
    tensor makes the host wait for the device to report how many entries are True, several
    times per step, which stalls small models that are bound by kernel launches.
    """
    n, t1 = target_mask.shape
    grid = torch.arange(n, device=target_mask.device)[:, None] * (t1 + 1) + torch.arange(t1, device=target_mask.device)
    return grid[target_mask]


def place(values: torch.Tensor, fwd: "ResponseForward") -> torch.Tensor:
    """[N, T, ...] tensor holding values [M, ...] at the response tokens (n, t + 1), 0 elsewhere."""
    n, t = fwd.token_logps.shape
    out = values.new_zeros((n * t,) + tuple(values.shape[1:]))
    return out.index_copy(0, fwd.index + 1, values).view(n, t, *values.shape[1:])


def response_forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     response_mask: torch.Tensor, impl: str = "lean", layers: bool = False,
                     target_index: torch.Tensor | None = None, packed: Packed | None = None) -> ResponseForward:
    """The model's forward, reduced to what response tokens need; see `token_logps` and ResponseForward.
    `target_index` is predicting_index(target_mask) computed ahead (collate does it on the host).
    With `packed` (packing.py) the model reads the packed rows instead of the padded ones; the
    outputs are the same [N, T] grid and [M, ...] rows, taken from the packed positions."""
    target_mask = response_mask[:, 1:] & attention_mask[:, 1:].bool()
    index = target_index if target_index is not None else predicting_index(target_mask)
    targets = input_ids.reshape(-1).index_select(0, index + 1)
    if packed is not None:
        kwargs = model_inputs(model, packed)
        # several padded positions may read one packed position (a shared prompt's last token):
        # index_select's backward adds their gradients, as the padded copies' gradients add up
        source = packed.where.index_select(0, index)
    else:
        # positions count real tokens only, so left-padded rows (generation) score as they were sampled
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        source = index
    if layers:
        kwargs["output_hidden_states"] = True
    at = lambda h: h.reshape(-1, h.shape[-1]).index_select(0, source)  # noqa: E731  [R, L, D] -> [M, D]
    if impl == "lean" and lean_path_supported(model):
        result = model.get_decoder()(**kwargs)
        rows = at(result.last_hidden_state)
        head = model.get_output_embeddings().weight
        # under no_grad (the reference) autograd still reports needs_input_grad: keep nothing there
        keep = KEEP_PROBS_ELEMENTS if torch.is_grad_enabled() else 0
        logps = ChunkedTokenLogps.apply(rows, head, targets, chunk_rows(head.shape[0]), keep).float()
    else:
        result = model(**kwargs)
        rows, head = at(result.logits), None
        logps = selective_log_softmax(rows, targets)
    n, t = input_ids.shape
    out = logps.new_zeros(n * t).index_copy(0, index + 1, logps).view(n, t)
    states = None
    if layers:
        # hidden_states[0] is the embedding output; [1:] are the L layer outputs, the last one after the
        # final norm (HF's convention), which is what SparsePO's mask head reads
        states = torch.stack([at(h) for h in result.hidden_states[1:]])
    return ResponseForward(out, rows, head, states, target_mask, index)


def token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    impl: str = "lean",
    target_index: torch.Tensor | None = None,
    packed: Packed | None = None,
) -> torch.Tensor:
    """[N, T] log-prob of each response token given everything before it; 0 elsewhere.

    response_mask[n, t] is True where token t of row n belongs to the response. The first
    token of a row is never scored (nothing predicts it). impl="lean" uses the chunked output
    projection; impl="full" the model's own logits (for models with logit transforms).
    """
    return response_forward(model, input_ids, attention_mask, response_mask, impl,
                            target_index=target_index, packed=packed).token_logps


def row_logits(rows: torch.Tensor, head: torch.Tensor | None, work: torch.dtype) -> torch.Tensor:
    """Logits of a chunk of rows: hidden states times the head, or the rows themselves."""
    return (rows if head is None else rows @ head.T).to(work)


class ChunkedTokenKL(torch.autograd.Function):
    """KL(pi_ref || pi) over the full vocabulary per row, computed and differentiated in chunks.

    Rows of each side are hidden states with their output head ([M, H], [V, H]) or logits ([M, V],
    head None). Only the policy side (rows, head) gets gradients: d KL / d logits = softmax(policy)
    - p_ref. Both sides' [chunk, V] blocks are recomputed in backward, never stored.
    """

    @staticmethod
    def forward(ctx, rows, head, ref_rows, ref_head, chunk: int):
        work = torch.promote_types(rows.dtype, torch.float32)
        out = torch.empty(rows.shape[0], dtype=work, device=rows.device)
        for start in range(0, rows.shape[0], chunk):
            logp = torch.log_softmax(row_logits(rows[start:start + chunk], head, work), dim=1)
            ref_logp = torch.log_softmax(row_logits(ref_rows[start:start + chunk], ref_head, work), dim=1)
            p_ref = ref_logp.exp()
            # where p_ref underflows to 0 the term is 0, even if a logit is -inf (0 * inf is not)
            terms = torch.where(p_ref > 0, p_ref * (ref_logp - logp), 0.0)
            out[start:start + chunk] = terms.sum(1)
        ctx.save_for_backward(rows, head, ref_rows, ref_head)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, head, ref_rows, ref_head = ctx.saved_tensors
        chunk = ctx.chunk
        work = torch.promote_types(rows.dtype, torch.float32)
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_head = torch.zeros(head.shape, dtype=work, device=head.device) \
            if head is not None and ctx.needs_input_grad[1] else None
        for start in range(0, rows.shape[0], chunk):
            r = rows[start:start + chunk]
            p = torch.softmax(row_logits(r, head, work), dim=1)
            p_ref = torch.softmax(row_logits(ref_rows[start:start + chunk], ref_head, work), dim=1)
            grad_logits = (p - p_ref).mul_(grad_out[start:start + chunk].to(work)[:, None])
            if grad_rows is not None:
                grad_rows[start:start + chunk] = (grad_logits if head is None
                                                  else grad_logits.to(rows.dtype) @ head).to(rows.dtype)
            if grad_head is not None:
                grad_head += grad_logits.T @ r.to(work)
        if grad_head is not None:
            grad_head = grad_head.to(head.dtype)
        return grad_rows, grad_head, None, None, None


def token_kl(policy: ResponseForward, ref_rows: torch.Tensor, ref_head: torch.Tensor | None) -> torch.Tensor:
    """[N, T] KL(pi_ref(.|x, y_<t) || pi(.|x, y_<t)) at each response position t, 0 elsewhere.

    ref_rows / ref_head: the reference's rows and head at the same M positions (its
    ResponseForward's `rows` and `head`); they carry no gradient. Gradients reach the policy
    through its rows and head.
    """
    if ref_rows.shape[0] != policy.rows.shape[0]:
        raise ValueError(f"reference rows ({ref_rows.shape[0]}) do not match the policy's ({policy.rows.shape[0]})")
    vocab = policy.head.shape[0] if policy.head is not None else policy.rows.shape[1]
    ref_head = None if ref_head is None else ref_head.detach()
    # half the usual budget: a chunk holds both sides' [chunk, V] blocks at once
    kl = ChunkedTokenKL.apply(policy.rows, policy.head, ref_rows.detach(), ref_head, chunk_rows(vocab, 1 << 22))
    return place(kl.float(), policy)


def selective_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[target] per row, in float32, one chunk of rows at a time."""
    chunk = chunk_rows(logits.shape[-1])
    parts = []
    for start in range(0, logits.shape[0], chunk):
        block = logits[start:start + chunk].float()
        picked = block.gather(1, targets[start:start + chunk, None]).squeeze(1)
        parts.append(picked - torch.logsumexp(block, dim=1))
    if not parts:
        return logits.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


def naive_token_logps(model, input_ids, attention_mask, response_mask) -> torch.Tensor:
    """Reference implementation for tests: full log_softmax then gather, nothing clever."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    mask = response_mask[:, 1:] & attention_mask[:, 1:].bool()
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = logp * mask
    return out
