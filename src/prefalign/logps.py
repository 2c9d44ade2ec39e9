"""Logits -> per-token -> per-sequence log-probs, without full-vocabulary tensors for the batch.

The standard path (model(...).logits, then log_softmax, then gather) holds at least two
[N, T, V] float32 tensors, and autograd keeps one for backward: this is where DPO runs out of
memory while SFT fits (trl#3168, trl#2452). Here the decoder's hidden states are taken only at
positions whose next token is a response token, and the output projection, log-sum-exp and
target gather run on chunks of those rows inside one autograd function that recomputes each
chunk's logits in backward instead of storing them. Peak extra memory is one [chunk, V] block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Config attributes that rescale or cap logits after the output projection. Models that set
# any of them take the standard (full-logits) path, which applies them inside the model.
LOGIT_TRANSFORM_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] per row, computed and differentiated in chunks."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        # float32 at least (log-sum-exp over a large vocabulary in bf16 loses the answer)
        work = torch.promote_types(hidden.dtype, torch.float32)
        out = torch.empty(hidden.shape[0], dtype=work, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start:start + chunk] @ weight.T).to(work)
            picked = logits.gather(1, targets[start:start + chunk, None]).squeeze(1)
            out[start:start + chunk] = picked - torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets = ctx.saved_tensors
        chunk = ctx.chunk
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        work = torch.promote_types(hidden.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=work, device=weight.device) if ctx.needs_input_grad[1] else None
        rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            g_out = grad_out[start:start + chunk].to(work)
            # d logp[t] / d logits = onehot(t) - softmax(logits), scaled by the incoming grad.
            grad_logits = torch.softmax((h @ weight.T).to(work), dim=1).mul_(-g_out[:, None])
            grad_logits[rows[: h.shape[0]], targets[start:start + chunk]] += g_out
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.to(work).T @ h.to(work)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def chunk_rows(vocab_size: int, budget_elements: int = 1 << 23) -> int:
    """Rows per chunk so that one [rows, V] float32 block stays near 32 MiB."""
    return max(16, budget_elements // max(1, vocab_size))


def lean_path_supported(model: torch.nn.Module) -> bool:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return False
    config = getattr(model, "config", None)
    return not any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORM_ATTRS)


def token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    impl: str = "lean",
) -> torch.Tensor:
    """[N, T] log-prob of each response token given everything before it; 0 elsewhere.

    response_mask[n, t] is True where token t of row n belongs to the response. The first
    token of a row is never scored (nothing predicts it). impl="lean" uses the chunked output
    projection; impl="full" the model's own logits (for models with logit transforms).
    """
    target_mask = response_mask[:, 1:] & attention_mask[:, 1:].bool()
    targets = input_ids[:, 1:][target_mask]
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    # positions count real tokens only, so left-padded rows (generation) score as they were sampled
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if impl == "lean" and lean_path_supported(model):
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids).last_hidden_state
        selected = hidden[:, :-1][target_mask]
        weight = model.get_output_embeddings().weight
        logps = ChunkedTokenLogps.apply(selected, weight, targets, chunk_rows(weight.shape[0])).float()
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        selected = logits[:, :-1][target_mask]
        logps = selective_log_softmax(selected, targets)
    out[:, 1:][target_mask] = logps
    return out


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
