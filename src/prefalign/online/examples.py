"""Prompts in, example specs out to tokenized examples: training scores exactly what was sampled.

A sampled row is prompt ids + response ids as drawn (no re-tokenising, no EOS appended to an
unfinished sample); only the data's own responses (SELM's candidates) are tokenized, by the same
RowBuilder as offline training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from prefalign.data.records import DataError, Text, check_text
from prefalign.data.tokenize import RowBuilder, TokenizedExample, with_row
from prefalign.logps import lean_path_supported, token_logps
from prefalign.online.samplers import Sample

KINDS = {"pair": "pair", "list": "list", "sft": "sft", "contrastive": "contrastive"}


@dataclass
class RoundPrompt:
    prompt: Text  # as the data has it (text or chat messages): what text judges see
    ids: list[int]  # the prompt's token ids, cut to the prompt budget as training cuts them
    source: str  # "file:row" for messages
    data_responses: list[Text] = field(default_factory=list)  # the data's chosen, rejected (pairs only)
    # SAMI: the prompt's ids under each constitution (source "c0", "c1", ... samples from these)
    conditioned: list[list[int]] = field(default_factory=list)

    def ids_for(self, source: str) -> list[int]:
        return self.conditioned[int(source[1:])] if source[:1] == "c" and source[1:].isdigit() else self.ids


def unique_prompts(examples: list) -> list[tuple[Text, str, list[Text]]]:
    """(prompt, source, the data's [chosen, rejected] when a pair) once per distinct prompt, in file order."""
    seen, out = set(), []
    for e in examples:
        key = json.dumps(e.prompt, sort_keys=True, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        responses = list(e.responses[:2]) if getattr(e, "kind", "") == "pair" else []
        out.append((e.prompt, e.source, responses))
    return out


def read_prompt_rows(rows, path: str) -> list[tuple[Text, str, list[Text]]]:
    """A prompts-only file (data.format: prompts): one {"prompt": text or messages} per row."""
    out = []
    for row_no, row in rows:
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, dict):
            raise DataError(path, row_no, "*", "a prompts row must be an object with a 'prompt'")
        out.append((check_text(row.get("prompt"), path, row_no, "prompt"), f"{path}:{row_no}", []))
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def sampled_row(sample: Sample) -> tuple[list[int], int]:
    return sample.prompt_ids + sample.response_ids, len(sample.prompt_ids)


def build_examples(specs: list[dict], prompts: list[RoundPrompt], samples: dict[str, list[list[Sample]]],
                   builder: RowBuilder, round: int, features: tuple = ()) -> list[TokenizedExample]:
    """TokenizedExamples from specs (online/pairing.py): sampled rows as drawn, data rows tokenized.
    A spec's y_ref row is added only for an objective with the ref_sample feature (the forward skips it
    otherwise)."""

    def row(i: int, ref: list) -> tuple[list[int], int]:
        source, k = ref[:2]
        if len(ref) == 3:  # SAMI: sample (source, k)'s response scored under another constitution's prompt
            prompt_ids = prompts[i].ids_for(ref[2])
            return prompt_ids + samples[source][i][k].response_ids, len(prompt_ids)
        if source == "data":
            p = prompts[i]
            try:
                ids, start, _ = builder.response_row(p.prompt, p.data_responses[k], p.source)
            except DataError as err:
                raise with_row(p.source, err) from None
            return ids, start
        return sampled_row(samples[source][i][k])

    out = []
    for spec in specs:
        i = spec["prompt"]
        rows = [row(i, ref) for ref in spec["rows"]]
        extra = {"features": {"soft_label": spec["soft_label"]}} if "soft_label" in spec else {}
        example = TokenizedExample([r[0] for r in rows], [r[1] for r in rows], list(spec["target"]),
                                   KINDS[spec["kind"]], f"round-{round}:{prompts[i].source}", extra=extra)
        if spec.get("ref_sample") is not None and "ref_sample" in features:
            example.policy_rows["ref_sample"] = row(i, spec["ref_sample"])
        out.append(example)
    return out


def padded_rows(samples: list[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt + response ids [N, T], attention mask, and the response tokens' mask."""
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response = torch.zeros_like(ids, dtype=torch.bool)
    for r, s in enumerate(samples):
        seq = s.prompt_ids + s.response_ids
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
        response[r, len(s.prompt_ids):len(seq)] = True
    return ids, mask, response


@torch.no_grad()
def response_logps(model, samples: list[Sample], pad_id: int, batch_size: int = 8) -> list[float]:
    """Summed log-prob of each sample's response tokens given its prompt under `model`."""
    device = next(model.parameters()).device
    impl = "lean" if lean_path_supported(model) else "full"
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(samples), batch_size):
        ids, mask, response = padded_rows(samples[start:start + batch_size], pad_id)
        tok = token_logps(model, ids.to(device), mask.to(device), response.to(device), impl)
        out.extend(tok.float().sum(1).cpu().tolist())
    model.train(was_training)
    return out


@torch.no_grad()
def policy_sample_stats(model, samples: list[Sample], pad_id: int, k: int, batch_size: int = 8
                        ) -> tuple[list, list, list]:
    """Per sample, from one forward: the response's summed log-prob, and the mean over its response
    positions of the top-k entropy and top-k mass (the likelihood over-optimisation indicators of
    arXiv 2410.11677)."""
    from prefalign.diagnostics.overoptimization import forward_stats, per_row_mean
    from prefalign.logps import response_forward

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logps, entropy, mass = [], [], []
    for start in range(0, len(samples), batch_size):
        ids, mask, response = padded_rows(samples[start:start + batch_size], pad_id)
        fwd = response_forward(model, ids.to(device), mask.to(device), response.to(device), "lean")
        logps.extend(fwd.token_logps.float().sum(1).cpu().tolist())
        e, m, rows = forward_stats(fwd, ids.shape[1], k)
        entropy.extend(per_row_mean(e, rows, ids.shape[0]).tolist())
        mass.extend(per_row_mean(m, rows, ids.shape[0]).tolist())
    model.train(was_training)
    return logps, entropy, mass
