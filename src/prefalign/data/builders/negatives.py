"""Negatives-only examples for D2O: a human-dispreferred response plus self-generated samples.

Duan et al. 2024, "Negating Negatives: Alignment with Human Negative Samples via Distributional
Dispreference Optimization", arXiv:2403.03419. D2O learns from human negatives alone: the
positive side of its loss is the mean log-ratio of K responses the model generated itself (the
anchors that keep it from collapsing), so a preferred human response is never used. The `d2o`
objective (prefalign.losses.negatives) reads one "list" example per prompt:

  responses  [negative, sample_1, ..., sample_K]
  target     [0, 1, ..., 1]      0 marks the human negative, 1 a self-generated sample

The negative is the rejected response of a pair (HH-RLHF or any pairs file; the chosen one is
deliberately dropped), the lowest-scored response of a ranked list, or an unpaired row labelled
false. Samples come from the data (a row's `samples` field: a list of response texts) or from
context.generator (the policy's starting model, i.e. the SFT model, in the paper's setup).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prefalign.data.builders.registry import BuildContext, data_builder
from prefalign.data.records import DataError, Example, check_text


@dataclass
class NegativesReport:
    negatives: int = 0
    samples: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> examples (or samples) left out

    def as_dict(self) -> dict:
        return {"negatives": self.negatives, "samples": self.samples, "dropped": dict(self.dropped)}


def human_negative(e: Example):
    """The dispreferred response of one example, or None when it has none."""
    if e.kind == "pair":
        return e.responses[1]
    if e.kind == "list":
        return e.responses[min(range(len(e.target)), key=lambda i: e.target[i])]
    if e.kind == "unpaired" and e.target[0] == 0.0:
        return e.responses[0]
    return None


def data_samples(e: Example, k: int) -> list:
    raw = e.extra.get("samples")
    source, _, row = e.source.rpartition(":")
    row_no = int(row) if row.isdigit() else 0
    if raw is None:
        raise DataError(source or e.source, row_no, "samples", "is missing: give each row a list of self-generated "
                        "responses, or use samples='generate' with a generator")
    if not isinstance(raw, list):
        raise DataError(source or e.source, row_no, "samples", f"must be a list of responses, got {type(raw).__name__}")
    return [check_text(s, source or e.source, row_no, f"samples[{i}]") for i, s in enumerate(raw[:k])]


def generated_samples(examples: list[Example], k: int, max_new_tokens: int, temperature: float,
                      context: BuildContext) -> list[list]:
    if context.generator is None:
        raise ValueError("d2o_negatives with samples='generate' needs a generator in the build context")
    from prefalign.models.generation import GenerateSettings  # only here: reading data needs no torch generate path

    settings = GenerateSettings(max_new_tokens=max_new_tokens, temperature=temperature, do_sample=True,
                                num_return_sequences=k, seed=context.seed)
    out = context.generator([e.prompt for e in examples], settings)
    if len(out) != len(examples):
        raise ValueError(f"the generator returned {len(out)} sample lists for {len(examples)} prompts")
    return out


@data_builder("d2o_negatives", paper="2403.03419")
def d2o_negatives(examples: list[Example], *, num_samples: int = 4, samples: str = "data", max_new_tokens: int = 128,
                  temperature: float = 1.0, context: BuildContext) -> tuple[list[Example], NegativesReport]:
    """Pairs / lists / unpaired rows -> [human negative, K self-generated samples] for the d2o objective.

    samples: "data" (each example's `samples` field) or "generate" (context.generator,
    num_samples per prompt, sampled at `temperature`). Empty samples, samples equal to the
    negative and repeated samples are dropped and counted; a prompt left with no sample is dropped.
    K = 4 is our default, not a value confirmed from the paper.
    """
    if num_samples < 1:
        raise ValueError(f"d2o needs at least 1 self-generated sample per prompt, got num_samples={num_samples}")
    if samples not in ("data", "generate"):
        raise ValueError(f"samples must be 'data' or 'generate', got {samples!r}")
    report, kept = NegativesReport(), []
    for e in examples:
        negative = human_negative(e)
        if negative is None:
            report.dropped[f"no human negative in a {e.kind} example"] += 1
        else:
            kept.append((e, negative))
    if samples == "generate":
        drawn = generated_samples([e for e, _ in kept], num_samples, max_new_tokens, temperature, context)
    else:
        drawn = [data_samples(e, num_samples) for e, _ in kept]
    out = []
    for (e, negative), candidates in zip(kept, drawn):
        anchors = usable_samples(negative, candidates, report)
        if not anchors:
            report.dropped["prompt with no usable sample"] += 1
            continue
        report.negatives += 1
        report.samples += len(anchors)
        extra = {k: v for k, v in e.extra.items() if k in ("id", "subset")}
        out.append(Example(e.prompt, [negative, *anchors], [0.0] + [1.0] * len(anchors), "list", e.source, extra))
    return out, report


def usable_samples(negative, candidates: list, report: NegativesReport) -> list:
    """The samples a list can hold: non-empty, distinct, and not the negative itself."""
    anchors = []
    for s in candidates:
        if isinstance(s, str) and not s.strip():
            report.dropped["empty sample"] += 1
        elif s == negative:
            report.dropped["sample identical to the negative"] += 1
        elif s in anchors:
            report.dropped["repeated sample"] += 1
        else:
            anchors.append(s)
    return anchors
