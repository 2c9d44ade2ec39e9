"""Token-level objectives: per-token log-ratios weighted, masked or regularised inside the loss.

Per-token inputs (feature "token_logps"): features["policy_token_logps"] [B, K, T] (with grad),
features["reference_token_logps"] [B, K, T] and features["token_mask"] [B, K, T] bool (True on
response tokens). Column 0 of K = 2 is the chosen response, column 1 the rejected one. Every
per-token input is read through `tokens`, which zeroes positions where token_mask is False, so
padding may hold anything (even -inf) without reaching the loss or the gradients.
`longpo` is here for its data layout (short and long contexts) but works on sequence log-probs;
`unlikelihood` reads the policy's token log-probs only (no reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


def require_pairs(batch: SeqLogps, name: str) -> None:
    if batch.policy.shape[1] != 2:
        raise ValueError(f"{name} needs exactly 2 responses per prompt (chosen, rejected), got "
                         f"{batch.policy.shape[1]}")


def tokens(batch: SeqLogps, name: str) -> torch.Tensor:
    """Feature `name` [B, K, T, ...] with non-response positions set to 0 before any arithmetic:
    masking first (masked_fill, not a product) keeps padding junk out of values and gradients."""
    mask = batch.feature("token_mask")
    value = batch.feature(name)
    return value.masked_fill(~mask.reshape(mask.shape + (1,) * (value.dim() - mask.dim())), 0.0)


def token_logratio(batch: SeqLogps) -> torch.Tensor:
    """[B, K, T] log pi(y_t) - log pi_ref(y_t) on response tokens, 0 elsewhere."""
    return tokens(batch, "policy_token_logps") - tokens(batch, "reference_token_logps")


def masked_tdpo(batch: SeqLogps, reward_mask: torch.Tensor, kl_mask: torch.Tensor, beta: float):
    """SparsePO's loss given its two [B, 2, T] masks: [B] losses and [B, 2] detached rewards."""
    # TDPO's implicit reward of a response is beta (sum_t log-ratio_t + SeqKL); SparsePO weights
    # both sums per token. The Bradley-Terry logit is the chosen minus the rejected reward.
    weighted = reward_mask * token_logratio(batch) + kl_mask * tokens(batch, "token_kl")
    rewards = beta * weighted.sum(-1)
    return -F.logsigmoid(rewards[:, 0] - rewards[:, 1]), rewards.detach()


@objective("sparsepo", kind="token_level", paper="2410.05102", reference=True,
           features=("token_logps", "token_kl", "mask_logits"))
def sparsepo(batch: SeqLogps, *, beta: float = 0.1, l1_u: float = 0.0, l1_d: float = 0.0) -> LossOut:
    """SparsePO with learned sparse masks: TDPO whose per-token rewards and KLs carry masks ReLU(head).

    Christopoulou et al., "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token
    Masks", arXiv:2410.05102, the masked TDPO objective (eq. 3 of the ICLR 2025 submission, per
its public reviews; m(y_t) in both sums):
        U(y) = sum_t m_u(y_t) log pi/pi_ref(y_t),  D(y) = sum_t m_d(y_t) KL_t(pi_ref || pi)
        loss = -log sigmoid(beta [(U(y_w) + D(y_w)) - (U(y_l) + D(y_l))])
               + l1_u (|m_u(y_w)|_1 + |m_u(y_l)|_1) + l1_d (|m_d(y_w)|_1 + |m_d(y_l)|_1).
    With one common mask m (= m_u = m_d) the penalty is ((l1_u + l1_d) / 2) (|m(y_w)|_1 + |m(y_l)|_1),
    as in the authors' release (huawei-noah/HEBO, SparsePO/src/trainers/sparse_trainer.py:
    SparseTrainer halves l1_norm_param_u and _d for a common mask so that it is not penalised twice,
    once as the reward mask and once as the KL mask); their HH recipe l1_u = l1_d = 1e-3 thus
    puts 1e-3 on |m|_1.
    With all masks 1 it is TDPO-1 (u - delta, delta = beta D(y_l) - beta D(y_w)); with all masks 1
    and token_kl = 0 it is DPO. The paper body could not be read here: the mask head, its
    activation and the sparsity penalty follow the authors' release (huawei-noah/HEBO, SparsePO:
    `simple_all` head, per-token ReLU masks, L1 weights l1_norm_param_u/_d, default 0; 1e-3 in
    their HH runs). Sparsity comes from the ReLU (exact zeros); masks are not capped at 1.

    Features: 'mask_logits' [B, 2, T] are the head's pre-activation outputs (one common mask for
    rewards and KL, the paper's SparsePO-common), or [B, 2, T, 2] for independent masks
    (SparsePO-indp: [..., 0] -> m_u, [..., 1] -> m_d). The release's head reads the frozen
    reference model's hidden states of every layer: per layer LayerNorm -> Linear(H, 1) -> ReLU
    (dropout), then a bias-free Linear(L, 1) across layers; the objective applies the final ReLU
    so that gradients reach the head through 'mask_logits'. The trainer's head is models.MaskHead
    (config `mask_head: common | independent`). Also 'token_kl' (see prefalign.features.sparsepo) and the
    token_logps tensors. Sums over response tokens (no length normalisation).
    rewards: beta (U + D) per response, [B, 2]; their difference is the loss logit.
    extras: "mask_sparsity" (share of response tokens with m_u = 0), "l1" (mean penalty).
    """
    require_pairs(batch, "sparsepo")
    m = F.relu(tokens(batch, "mask_logits"))
    if m.dim() == 4:
        m_u, m_d = m[..., 0], m[..., 1]
        l1 = l1_u * m_u.sum((1, 2)) + l1_d * m_d.sum((1, 2))
    else:
        # one mask serves as both: the release halves both weights rather than penalise it twice
        m_u = m_d = m
        l1 = (l1_u + l1_d) / 2 * m.sum((1, 2))
    losses, rewards = masked_tdpo(batch, m_u, m_d, beta)
    sparsity = (m_u == 0)[batch.feature("token_mask")].to(m_u.dtype).mean()
    return LossOut(losses + l1, rewards, {"mask_sparsity": sparsity.detach(), "l1": l1.detach().mean()})


@objective("sparsepo_act", kind="token_level", paper="2410.05102", reference=True,
           features=("token_logps", "token_kl", "activation_mask"))
def sparsepo_act(batch: SeqLogps, *, beta: float = 0.1) -> LossOut:
    """SparsePO with masks from the reference model's activations (the paper's "MaPO" variant).

    Christopoulou et al., arXiv:2410.05102, the masked TDPO objective (see `sparsepo`) with one
    common, fixed mask m(y_t) in [0, 1] on the token log-ratios and the token KLs:
        loss = -log sigmoid(beta [(U(y_w) + D(y_w)) - (U(y_l) + D(y_l))]),
        U(y) = sum_t m_t log pi/pi_ref(y_t),  D(y) = sum_t m_t KL_t(pi_ref || pi).
    No penalty: nothing is learned in the mask. Named sparsepo_act here because `mapo` is Margin-
    aware PO (arXiv:2406.06424) in this registry.

    What the trainer computes for 'activation_mask' [B, 2, T] (per the authors' release,
    huawei-noah/HEBO SparsePO, activation_hook="all", activation_mapping="zn_rescale"), from one
    no-grad forward of the reference model on each prompt + response: for every hooked activation
    a [T, D] of the sequence (each layer's MLP post-activation; attention q, k, v (also after rotary
    embedding) and pre-output-projection values, heads flattened; the residual stream at each
    sub-layer input/output; the embeddings and final-norm output; the logits), take the mean over D
    at each position, z-normalise it over the response tokens (masked mean and std), then min-max
    rescale it to [0, 1] over the response tokens; the mask averages these maps within each hook
    group (MLP, attention, residual, logits), then averages the four group means (the release's
    order), and is 0 off the response. Position t is the state that predicts y_t. The trainer's
    implementation and its two departures (the z-normalisation is a no-op before a min-max
    rescale and is skipped; a constant map is 1, where the release divides by zero) are in
    prefalign.models.activations.
    Also 'token_kl' and the token_logps tensors. Sums over response tokens.
    rewards: beta (U + D) per response, [B, 2]. extras: "mask_mean" (mean mask on response tokens).
    """
    require_pairs(batch, "sparsepo_act")
    m = tokens(batch, "activation_mask").detach()
    losses, rewards = masked_tdpo(batch, m, m, beta)
    return LossOut(losses, rewards, {"mask_mean": m[batch.feature("token_mask")].mean()})


@objective("treg", kind="token_level", paper="2412.02685", reference=True,
           features=("token_logps", "contrast_token_rewards"))
def treg(batch: SeqLogps, *, beta: float = 0.1, alpha: float = 0.25) -> LossOut:
    """T-REG: DPO plus a regulariser pulling token rewards toward self-generated contrastive ones.

    Zhou et al., "T-REG: Preference Optimization with Token-Level Reward Regularization",
    arXiv:2412.02685, the DPO-REG objective (Sec. 3):
        L = L_DPO + alpha * w * (L_REG(y_w) + L_REG(y_l)),
        L_REG(y) = -beta sum_t r_hat_t log pi/pi_ref(y_t)   (minus the token rewards' similarity),
        w = sg(sigmoid(beta (h_l - h_w))), the sequence weight of DPO's own gradient,
    with r_hat_t = sigmoid(log p(y_t | x_better, y_<t) - log p(y_t | x_worse, y_<t)) - 0.5 from the
    reference model under "make it better / worse" revision prompts ('contrast_token_rewards').
    The paper simplifies L_REG to the weighted LM loss -beta sum_t r_hat_t log pi(y_t); the form
    here differs only by a constant in theta (same gradients) and is 0 at pi = pi_ref, so the loss
    starts at ln 2. The paper body could not be read here (form from a third-party reading of its
    Sec. 3; no code release found). Assumed: token sums without length normalisation, w detached.
    alpha was searched in {0.1, 0.25, 0.5} (default: the middle); beta: DPO's usual 0.1 (set it
    as for your DPO runs).

    Shapes: batch.policy / batch.reference [B, 2] summed log-probs (the DPO term and w); the
    token_logps tensors and 'contrast_token_rewards' [B, 2, T] (the regulariser, no grad in r_hat).
    The trainer computes r_hat with the reference model from the instructions data.contrast_better /
    data.contrast_worse, each followed by a copy of the response's token ids (prefalign.data.contrast).
    rewards: beta * (policy - reference), [B, 2]. extras: "dpo", "reg" (mean L_REG sum), "weight".
    alpha = 0, or r_hat = 0, gives DPO.
    """
    require_pairs(batch, "treg")
    h = batch.logratio()
    logits = beta * (h[:, 0] - h[:, 1])
    weight = torch.sigmoid(-logits).detach()
    r_hat = tokens(batch, "contrast_token_rewards").detach()
    reg = -beta * (r_hat * token_logratio(batch)).sum((1, 2))
    dpo = -F.logsigmoid(logits)
    extras = {"dpo": dpo.detach().mean(), "reg": reg.detach().mean(), "weight": weight.mean()}
    return LossOut(dpo + alpha * weight * reg, (beta * h).detach(), extras)


@objective("longpo", kind="pairwise", paper="2502.13922", reference=True,
           features=("long_chosen_nll", "short_prompt"))
def longpo(batch: SeqLogps, *, beta: float = 0.01, lambda_: float = 0.01) -> LossOut:
    """LongPO: NLL on the long-context chosen sequence + lambda * short-to-long DPO.

    Chen et al., "LongPO: Long Context Self-Evolution of Large Language Models through
    Short-to-Long Preference Optimization", arXiv:2502.13922 (ICLR 2025), the LongPO objective:
        L = NLL(x_L + y_w) + lambda_ * -log sigmoid(beta [log pi(y_w|x_L)/pi_ref(y_w|x_S)
                                                          - log pi(y_l|x_L)/pi_ref(y_l|x_S)]).
    Data layout: per instruction, x_S is a short chunk of a long document x_L; y_w was generated
    by the (short-context) model from x_S, y_l by the same model from x_L. batch.policy [B, 2] =
    summed log-probs of (y_w, y_l) under the policy given the LONG context x_L; batch.reference
    [B, 2] = summed log-probs of (y_w, y_l) under the reference given the SHORT context x_S (the
    short-to-long KL constraint; for multi-chunk data, the sum over the chunks' short contexts).
    'long_chosen_nll' [B]: mean per-token NLL of the whole chosen sequence (document, instruction
    and y_w) under the policy. The paper body could not be read here: the form (NLL + lambda_ x
    preference) and the defaults (beta = 0.01, lambda_ = 0.01) follow the authors' release
    (DAMO-NLP-SG/LongPO, LongPOMTLMUlyssesTrainer and its README command), and so does the NLL's
    span: their trainer (train/longdpo_trainer.py) takes the NLL over the whole long chosen
    sequence, from labels in which the line that would mask the prompt tokens is commented out.
    What the trainer supplies: rows carry `short_prompt` (x_S + the instruction; `prompt` is x_L +
    the instruction); batch.reference is computed on the short rows, which are the short prompt's
    tokens followed by a copy of each response's tokens (data/tokenize.short_sequence), with a
    live reference (frozen, adapter_off) or precomputed once (the cache keys on the short rows);
    'long_chosen_nll' comes from an extra policy row, the chosen long sequence after truncation,
    scored from its second token (the first has no prediction). Single-instruction rows only:
    the paper's multi-turn variant (several chunks and instructions per document) is not built.
    rewards: beta * (policy - reference), [B, 2] (long-context policy against short-context
    reference). extras: "nll" and "preference" (batch means). With the same context on both sides
    the preference term is DPO.
    """
    require_pairs(batch, "longpo")
    h = batch.logratio()
    preference = -F.logsigmoid(beta * (h[:, 0] - h[:, 1]))
    nll = batch.feature("long_chosen_nll")
    extras = {"nll": nll.detach().mean(), "preference": preference.detach().mean()}
    return LossOut(nll + lambda_ * preference, (beta * h).detach(), extras)


# Largest token log-prob the unlikelihood term reads: log(1 - 1e-5). A token the policy already gives
# p = 1 (log-prob 0; float rounding reaches it) would make log(1 - p) = -inf; clamped, 1 - p is at
# least 1e-5, so the term is at least log(1e-5) = -11.5 per token. The price: a token above the clamp
# (p > 1 - 1e-5) gets no gradient from this term until its probability falls below it.
_UL_MAX_LOGP = math.log1p(-1e-5)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler's split at x = -ln 2): expm1 near 0,
    where 1 - exp(x) cancels, and log1p for very negative x, where exp(x) is tiny."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@objective("unlikelihood", kind="token_level", paper="1908.04319", reference=False,
           features=("token_logps", "lengths"))
def unlikelihood(batch: SeqLogps, *, alpha: float = 1.0) -> LossOut:
    """Unlikelihood: SFT on the chosen response plus alpha * token unlikelihood of the rejected one.

    Welleck et al., "Neural Text Generation with Unlikelihood Training", arXiv:1908.04319: the
    token-level unlikelihood term -sum_t log(1 - p(c_t | prefix)) over negative tokens c_t, added to
    the likelihood loss. As the preference baseline of the DPO paper (Rafailov et al.,
    arXiv:2305.18290, Sec. 6: it "maximizes p(y_w|x) while minimizing p(y_l|x)", with alpha in [0, 1]
    on the unlikelihood term) the negative tokens are those of the rejected response:
        loss = -(1/|y_w|) sum_t log pi(y_w,t | x, y_w,<t)
               - alpha (1/|y_l|) sum_t log(1 - pi(y_l,t | x, y_l,<t)).
    The first term is `sft` exactly (the chosen response's summed log-prob over its n_tokens), so
    alpha = 0 gives sft; the second is a per-token mean over the rejected response's tokens
    (token_mask). log(1 - p) is computed as log1mexp of the token log-prob, with the log-prob clamped
    at log(1 - 1e-5) so that p = 1 gives a finite loss (see _UL_MAX_LOGP). No reference model.

    Shapes: batch.policy and n_tokens [B, 2] (chosen, rejected); features 'policy_token_logps' and
    'token_mask' [B, 2, T]. rewards: the policy's mean token log-prob of each response, [B, 2]
    (as sft). extras: "nll" (chosen per-token NLL) and "unlikelihood" (the rejected per-token mean
    -log(1 - p)), batch means.
    """
    require_pairs(batch, "unlikelihood")
    per_token = batch.policy / batch.lengths().clamp(min=1)
    nll = -per_token[:, 0]
    mask = batch.feature("token_mask")[:, 1]
    # clamp before log1mexp: padding (zeroed by `tokens`) and p = 1 tokens then stay finite, values and gradients
    rejected = tokens(batch, "policy_token_logps")[:, 1].clamp(max=_UL_MAX_LOGP)
    log_not_p = log1mexp(rejected).masked_fill(~mask, 0.0)
    ul = -log_not_p.sum(-1) / mask.sum(-1).clamp(min=1).to(log_not_p.dtype)
    extras = {"nll": nll.detach().mean(), "unlikelihood": ul.detach().mean()}
    return LossOut(nll + alpha * ul, per_token.detach(), extras)
