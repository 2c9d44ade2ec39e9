"""Reference-policy samples (SELM arXiv:2405.19332, XPO arXiv:2405.21046): a response sampled from
the reference policy per prompt, a row field scored by the policy next to the K responses."""

from __future__ import annotations

import torch

from prefalign.data.records import DataError
from prefalign.data.tokenize import with_row
from prefalign.features.registry import FeatureSupplier, supplier


@supplier
class RefSample(FeatureSupplier):
    name = "ref_sample"
    description = ("a response y_ref sampled from the reference policy for each prompt: features "
                   "'ref_sample_logps' [B] (policy summed log-probs of y_ref, with grad) and, where asked for, "
                   "'ref_sample_reference_logps' [B] (reference summed log-probs of y_ref)")
    row_field = "ref_sample"
    token_reference = True  # its reference value comes from the reference's forward on the list batch

    def tokenize(self, example, tokenized, builder):
        if self.row_field not in example.extra:
            raise with_row(example.source, DataError("", 0, "ref_sample", "is missing (the objective needs a "
                                                                          "response sampled from the reference policy)"))
        try:
            ids, start, _ = builder.response_row(example.prompt, example.extra[self.row_field], example.source)
        except DataError as err:
            if err.field == "response":
                err.field = "ref_sample"  # name the row field the bad response came from
            raise with_row(example.source, err) from None
        tokenized.policy_rows[self.name] = (ids, start)

    def collate(self, examples, batch, pad_id, pad_multiple, pack=None):
        if examples[0].reference is not None:
            batch.extras["ref_sample/reference"] = torch.tensor([e.reference[self.name] for e in examples])

    def reference_values(self, tok, batch):
        return tok[batch.extras[self.name]].sum(1)

    def compute(self, step):
        rows = step.batch.extras[self.name]
        # token log-probs are 0 off the response, so a row's sum is its response log-prob (with grad)
        out = {"ref_sample_logps": step.token_logps[rows].sum(1)}
        if "ref_sample/reference" in step.batch.extras:
            out["ref_sample_reference_logps"] = step.batch.extras["ref_sample/reference"].to(out["ref_sample_logps"].dtype)
        elif step.reference_token_logps is not None:
            out["ref_sample_reference_logps"] = step.reference_token_logps[rows].sum(1)
        return out
