"""One micro-batch: forward (policy and reference) -> SeqLogps -> objective -> metrics."""

from __future__ import annotations

import torch

from prefalign.losses import Objective
from prefalign.models import model_args, sequence_sums, to_slots
from prefalign.train.metrics import batch_metrics
from prefalign.types import LossOut, SeqLogps


def batch_to_device(batch: dict, device) -> dict:
    """Tensors moved to `device`, nested row batches ("mismatched", "contrast") included."""
    def move(v):
        if isinstance(v, dict):
            return batch_to_device(v, device)
        return v.to(device) if isinstance(v, torch.Tensor) else v

    return {k: move(v) for k, v in batch.items()}


# Features computed against a live reference in the same forward: feature -> what the reference
# forward must return for it (see models.reference_forward).
REFERENCE_EXTRAS = {"token_kl": "rows", "mask_logits": "layers", "activation_mask": "activations"}


def reference_extras(objective: Objective) -> dict[str, bool]:
    """Keyword flags for reference.features(): which extras this objective's features need."""
    return {flag: feature in objective.features for feature, flag in REFERENCE_EXTRAS.items()}


def forward_batch(policy, batch: dict, reference, objective: Objective) -> SeqLogps:
    """Chosen and rejected (all K responses) go through the policy in one concatenated forward,
    together with any reference-policy samples (extra rows after the N list rows)."""
    args = model_args(batch)
    wanted = reference_extras(objective)
    # LongPO: the reference scores the responses after the short prompt (collate's "short" rows)
    ref_rows = batch.get("short", batch)
    if "short" in batch and (any(wanted.values()) or "token_logps" in objective.features or "ref_sample_index" in batch):
        raise ValueError("short-context reference rows (LongPO) give sequence log-probs only; they cannot be combined "
                         "with token-level reference features or reference samples")
    ref_out = None
    if any(wanted.values()):
        if reference is None or "reference_logps" in batch:
            needs = [f for f in REFERENCE_EXTRAS if f in objective.features]
            raise ValueError(f"{needs} need a live reference model (reference=frozen or adapter_off)")
        # the reference goes first: the policy's token KL and mask head read its states
        ref_out = reference.features(batch, **wanted)
    if ref_out is not None and (wanted["rows"] or wanted["layers"]):
        pol = policy(*args, reference=ref_out.states)
    else:
        pol = {"token_logps": policy(*args)}
    tok = pol["token_logps"]
    policy_sums, n_tokens = sequence_sums(tok, batch)
    ref_sums, ref_tok = None, None
    if "reference_logps" in batch:
        ref_sums = batch["reference_logps"].to(policy_sums.dtype)
    elif reference is not None:
        ref_tok = ref_out.token_logps if ref_out is not None else reference(ref_rows)
        ref_sums, _ = sequence_sums(ref_tok, ref_rows)
    features = {}
    shape, n = tuple(batch["valid"].shape), batch["row_index"].numel()
    if "token_logps" in objective.features:
        mask = torch.zeros_like(batch["response_mask"][:n])
        mask[:, 1:] = scored_mask(batch)
        features["policy_token_logps"] = to_slots(tok[:n], batch["row_index"], shape)
        features["token_mask"] = to_slots(mask, batch["row_index"], shape)
        if ref_tok is not None:
            features["reference_token_logps"] = to_slots(ref_tok[:n], batch["row_index"], shape)
    for name in ("token_kl", "mask_logits"):
        if name in pol:
            features[name] = to_slots(pol[name][:n], batch["row_index"], shape)
    if ref_out is not None and ref_out.activation_mask is not None:
        features["activation_mask"] = to_slots(ref_out.activation_mask[:n], batch["row_index"], shape)
    if "ref_sample_index" in batch:
        # tok is 0 off the response, so a row's sum is its response log-prob (with grad)
        features["ref_sample_logps"] = tok[batch["ref_sample_index"]].sum(1)
        if "reference_ref_sample_logps" in batch:
            features["ref_sample_reference_logps"] = batch["reference_ref_sample_logps"].to(policy_sums.dtype)
        elif ref_tok is not None:
            features["ref_sample_reference_logps"] = ref_tok[batch["ref_sample_index"]].sum(1)
    if "contrast_token_rewards" in objective.features:
        features["contrast_token_rewards"] = to_slots(contrast_token_rewards(reference, batch), batch["row_index"],
                                                      shape)
    if "nll_index" in batch:
        features["long_chosen_nll"] = whole_sequence_nll(tok, batch)
    for key, value in batch.items():
        if key.startswith("feature/"):
            features[key.split("/", 1)[1]] = value
    if "kl_logratio" in objective.features:
        features["kl_logratio"] = mismatched_logratio(policy, reference, batch["mismatched"])
    return SeqLogps(policy=policy_sums, reference=ref_sums, n_tokens=n_tokens, valid=batch["valid"],
                    target=batch["target"].to(policy_sums.dtype), features=features)


def whole_sequence_nll(tok: torch.Tensor, batch: dict) -> torch.Tensor:
    """[B] mean NLL per scored token of the rows at batch["nll_index"] (with grad). Those rows are
    scored from their second token (start 0), so this is the NLL of the whole sequence but its first."""
    rows = batch["nll_index"]
    counts = (batch["response_mask"][rows, 1:] & batch["attention_mask"][rows, 1:].bool()).sum(1)
    return -tok[rows].sum(1) / counts.to(tok.dtype)


def scored_mask(rows: dict, n: int | None = None) -> torch.Tensor:
    """[n, T - 1] True where token t + 1 of a row is a scored response token (what token_logps fills)."""
    n = rows["row_index"].numel() if n is None else n
    return rows["response_mask"][:n, 1:] & rows["attention_mask"][:n, 1:].bool()


@torch.no_grad()
def contrast_token_rewards(reference, batch: dict) -> torch.Tensor:
    """[N, T] T-REG's r_hat_t = sigmoid(log p_ref(y_t | x_better, y_<t) - log p_ref(y_t | x_worse, y_<t)) - 0.5
    at each list row's scored response positions, 0 elsewhere (no gradient: a fixed target).

    The contrast batch holds, per list row r, its "better" row r and its "worse" row N + r, each
    ending in exactly row r's response ids with the same tokens scored (data/contrast.py). Read in
    row order, the scored values of the three rows therefore line up token for token, whatever
    each row's prompt length and padding.
    """
    if reference is None:
        raise ValueError("T-REG's contrastive token rewards need a live reference model (reference=frozen or "
                         "adapter_off)")
    rows = batch["contrast"]
    n = batch["row_index"].numel()
    tok = reference(rows)[:, 1:]
    scored = scored_mask(rows, 2 * n)
    better, worse = tok[:n][scored[:n]], tok[n:][scored[n:]]
    main = scored_mask(batch)
    # an explicit count check: a one-token mismatch would otherwise broadcast instead of failing
    if not better.numel() == worse.numel() == int(main.sum()):
        raise ValueError("contrast rows score other response tokens than their list rows; build them with "
                         "data.contrast.contrast_sequences")
    out = torch.zeros(main.shape[0], main.shape[1] + 1, dtype=tok.dtype, device=tok.device)
    out[:, 1:][main] = torch.sigmoid(better - worse) - 0.5
    return out


@torch.no_grad()
def mismatched_logratio(policy, reference, mis: dict) -> torch.Tensor:
    """[B] policy - reference log-probs of mismatched (prompt, completion) pairs, no gradient:
    KTO's z0 is detached, so this forward needs no graph."""
    if reference is None:
        raise ValueError("the KL reference point needs a live reference model (reference=frozen or adapter_off)")
    pol, _ = sequence_sums(policy(*model_args(mis)), mis)
    ref, _ = sequence_sums(reference(mis), mis)
    return (pol - ref)[:, 0]


def run_objective(objective: Objective, seq: SeqLogps, params: dict) -> tuple[LossOut, dict]:
    out = objective(seq, **params)
    return out, batch_metrics(seq, out)
