"""T-REG's contrastive token rewards (arXiv:2412.02685): each response's own token ids after a
"better" and a "worse" instruction (data.contrast), scored by the reference model."""

from __future__ import annotations

import torch

from prefalign.data.contrast import CONTRAST_BETTER, CONTRAST_WORSE, contrast_sequences
from prefalign.data.records import DataError
from prefalign.data.tokenize import with_row
from prefalign.features.registry import FeatureSupplier, supplier


@supplier
class ContrastTokenRewards(FeatureSupplier):
    name = "contrast_token_rewards"
    description = ("'contrast_token_rewards' [B, K, T] in [-0.5, 0.5]: sigmoid(log p(y_t | x_better, y_<t) - "
                   "log p(y_t | x_worse, y_<t)) - 0.5 under the reference model with contrastive prompts (T-REG)")
    live_reference = "per-token reference log-probs under T-REG's contrastive prompts"
    options = ("contrast",)  # (better, worse) templates; data.contrast's defaults when not given

    def tokenize(self, example, tokenized, builder):
        templates = builder.options.get("contrast") or (CONTRAST_BETTER, CONTRAST_WORSE)
        rows = {"better": [], "worse": []}
        for k, response in enumerate(example.responses):
            try:
                made = contrast_sequences(builder.tokenizer, example.prompt, response, templates,
                                          tokenized.sequences[k], tokenized.response_starts[k],
                                          builder.full_starts[k], example.source)
            except DataError as err:
                raise with_row(example.source, err) from None
            for name, row in made.items():
                rows[name].append(row)
        # batched group by group (data.collate.side_batch): row r and row N + r belong to list row r
        tokenized.side_rows[self.name] = rows

    def compute(self, step):
        return {self.name: step.slots(contrast_token_rewards(step.reference, step.batch))}


@torch.no_grad()
def contrast_token_rewards(reference, batch) -> torch.Tensor:
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
    rows = batch.extras[ContrastTokenRewards.name]
    n = batch.n_rows
    tok = reference(rows)[:, 1:]
    scored = rows.scored_mask(2 * n)
    better, worse = tok[:n][scored[:n]], tok[n:][scored[n:]]
    main = batch.scored_mask(n)
    # an explicit count check: a one-token mismatch would otherwise broadcast instead of failing
    if not better.numel() == worse.numel() == int(main.sum()):
        raise ValueError("contrast rows score other response tokens than their list rows; build them with "
                         "data.contrast.contrast_sequences")
    out = torch.zeros(main.shape[0], main.shape[1] + 1, dtype=tok.dtype, device=tok.device)
    out[:, 1:][main] = torch.sigmoid(better - worse) - 0.5
    return out
