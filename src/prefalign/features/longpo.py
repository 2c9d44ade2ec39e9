"""LongPO's inputs (arXiv:2502.13922): the reference scores the responses after the short context
(row field `short_prompt`, data.tokenize.short_sequence), and the policy's NLL of the whole long
chosen sequence (an extra policy row)."""

from __future__ import annotations

from dataclasses import replace

from prefalign.data.records import DataError
from prefalign.data.tokenize import short_sequence, with_row
from prefalign.features.registry import FeatureSupplier, supplier
from prefalign.features.sequence_nll import ChosenSequenceNLL


@supplier
class ShortPrompt(FeatureSupplier):
    name = "short_prompt"
    description = ("a row field 'short_prompt' (short context + the same instruction): batch.reference holds the "
                   "reference's log-probs of the responses after it instead of after 'prompt' (LongPO)")
    row_field = "short_prompt"
    excludes = ("ref_sample",)

    def tokenize(self, example, tokenized, builder):
        if self.row_field not in example.extra:
            raise with_row(example.source, DataError("", 0, "short_prompt", "is missing (the objective scores the "
                                                                             "reference after the short context)"))
        try:
            rows = [short_sequence(builder.tokenizer, example.extra[self.row_field], response, tokenized.sequences[k],
                                   tokenized.response_starts[k], builder.max_length, builder.max_prompt_length,
                                   example.source)
                    for k, response in enumerate(example.responses)]
        except DataError as err:
            err.field = "short_prompt"  # the prompt, not the response, is what differs from the main rows
            raise with_row(example.source, err) from None
        # row k of this side batch is list row k: it sums into the same [B, K] slots
        tokenized.side_rows[self.name] = rows

    def reference_rows(self, batch):
        return replace(batch, **vars(batch.extras[self.name]), extras={})

    def check_step(self, step, active):
        if any(s.token_reference for s in active):
            raise ValueError("short-context reference rows (LongPO) give sequence log-probs only; they cannot be "
                             "combined with token-level reference features or reference samples")


@supplier
class LongChosenNLL(ChosenSequenceNLL):
    name = "long_chosen_nll"
    description = ("'long_chosen_nll' [B]: mean per-token NLL of the whole chosen sequence (long context, "
                   "instruction and response) under the policy, with grad (LongPO)")
