"""The parts of `prefalign online` around the round: prompts, the judge, metric sinks, evaluation.

Evaluation samples the same held-out prompts after every round (seeded per round), and measures
the judge's score of the policy's sample, its win rate against the starting policy's sample for the
same prompt, a Monte-Carlo KL to the starting model from the sampled tokens (sum of log pi - log
pi_ref over the response; an unbiased estimate at online.eval_temperature 1), the response length
and whether it finished. Intervals come from diagnostics.online.round_eval.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefalign.config import OnlineConfig, prompt_length
from prefalign.data.formats.readers import iter_rows, load_examples, seeded_split
from prefalign.models.generation import GenerateSettings, encode_prompt, prompt_ids
from prefalign.online.examples import RoundPrompt, read_prompt_rows, policy_sample_stats, response_logps, unique_prompts
from prefalign.online.samplers import HFSampler, sample_seed
from prefalign.online.store import (CachedJudge, VerdictCache, load_samples, read_json, save_samples,
                                    write_json_atomic)

RESPONSE_FIELDS = ("chosen", "rejected", "responses", "completion", "response", "label", "messages", "answer")
EVAL_STREAM = 200_000


def response_text(tokenizer, sample) -> str:
    """What a text judge reads: the response without its EOS, special tokens dropped."""
    ids = sample.response_ids[:-1] if sample.finished else sample.response_ids
    return tokenizer.decode(ids, skip_special_tokens=True)


def judge_key(run, r: int, use: str = "label") -> str:
    o = run.cfg.online
    # a judge bound to the policy answers differently each round; the cache lives in the round's folder anyway
    bound = o.judge == "implicit_reward" or o.judge_on_policy or o.consistency_judge == "implicit_reward"
    judge = [o.judge, o.judge_args] + ([o.consistency_judge, o.consistency_judge_args]
                                       if use == "label" and o.consistency_judge else [])
    return json.dumps([judge, r if bound else None], sort_keys=True)


class OffsetSink:
    """A metric sink seen through one round: steps continue across rounds and lines carry the round."""

    def __init__(self, sink, offset: int, round: int):
        self.sink, self.offset, self.round = sink, offset, round

    def log(self, step: int, metrics: dict) -> None:
        self.sink.log(step + self.offset, {"round": self.round, **metrics})

    def close(self) -> None:  # the run closes the real sinks once, after the last round
        return None


def prompt_only_file(path: str) -> bool:
    """A local file whose first row has a prompt and no response field (data.format auto)."""
    if not Path(path).is_file():
        return False
    for _, row in iter_rows(path):
        return isinstance(row, dict) and "prompt" in row and not any(k in row for k in RESPONSE_FIELDS)
    return False


def read_prompts(cfg: OnlineConfig, source: str, split: str, report: dict, name: str) -> list:
    """Distinct prompts of a file; `report[name]` says how many rows were read and skipped."""
    if cfg.data.format == "prompts" or (cfg.data.format == "auto" and prompt_only_file(source)):
        items = read_prompt_rows(iter_rows(source), source)
        report[name] = {"rows": len(items), "prompts": len(items)}
        return items
    examples, loaded = load_examples(source, cfg.data.format, cfg.data.on_bad_row, cfg.data.score_aspect,
                                     split=split, dataset_config=cfg.data.dataset_config)
    items = unique_prompts(examples)
    report[name] = {**loaded.as_dict(), "prompts": len(items)}
    return items


def load_round_prompts(cfg: OnlineConfig, tokenizer, report: dict) -> tuple[list[RoundPrompt], list[RoundPrompt]]:
    """(training prompts, held-out prompts): distinct prompts of data.train and data.eval (or a seeded
    split of data.train), encoded once and cut to the prompt budget as training cuts them. What was
    read (and skipped, with data.on_bad_row: skip) goes into `report`."""
    train = read_prompts(cfg, cfg.data.train, cfg.data.split, report, "train")
    if cfg.data.eval:
        held = read_prompts(cfg, cfg.data.eval, cfg.data.eval_split, report, "eval")
    elif cfg.online.eval_prompts and cfg.data.eval_fraction > 0:
        train, held = seeded_split(train, cfg.data.eval_fraction, cfg.seed)
    else:
        held = []
    if cfg.data.max_examples:
        train = train[:cfg.data.max_examples]
    if not train:
        raise ValueError(f"{cfg.data.train}: no prompts to sample from")

    return encode_prompts(cfg, tokenizer, train), encode_prompts(cfg, tokenizer, held[:cfg.online.eval_prompts])


def encode_prompts(cfg: OnlineConfig, tokenizer, items: list) -> list[RoundPrompt]:
    if cfg.online.chat_template and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("online.chat_template=true needs a tokenizer with a chat template")
    out = []
    for p, src, responses in items:
        if cfg.online.chat_template and isinstance(p, str):
            p = [{"role": "user", "content": p}]  # data rows (SELM) then render the same way
        if cfg.online.direction:
            p, ids = with_instruction(tokenizer, p, direction_instruction(cfg.online), prompt_length(cfg), src)
        else:
            ids = encode_prompt(tokenizer, p, prompt_length(cfg))
        conditioned = [with_instruction(tokenizer, p, c, prompt_length(cfg), src)[1]
                       for c in cfg.online.constitutions]
        out.append(RoundPrompt(p, ids, src, responses, conditioned))
    return out


def load_domain_prompts(cfg: OnlineConfig, tokenizer, report: dict) -> list[list[RoundPrompt]]:
    """The prompts of each online.domains file (the domains after data.train's), read like data.train;
    `report` gets one entry per domain ("domain-1", ...)."""
    out = []
    for d, path in enumerate(cfg.online.domains, start=1):
        items = read_prompts(cfg, str(path), cfg.data.split, report, f"domain-{d}")
        if not items:
            raise ValueError(f"{path} (online.domains[{d - 1}]): no prompts")
        out.append(encode_prompts(cfg, tokenizer, items))
    return out


def unit(direction: list) -> list[float]:
    norm = sum(float(v) ** 2 for v in direction) ** 0.5
    if norm == 0:
        raise ValueError("online.direction must not be the zero vector")
    return [float(v) / norm for v in direction]


def direction_instruction(o) -> str:
    """DPA's instruction for the run's direction, e.g. '... = helpfulness*0.71 + verbosity*0.71.'"""
    weighted = " + ".join(f"{a}*{w:.2f}" for a, w in zip(o.direction_attributes, unit(o.direction)))
    return o.direction_template.format(weighted=weighted)


def with_instruction(tokenizer, prompt, instruction: str, budget: int, source: str) -> tuple:
    """(the prompt preceded by an instruction (DPA's direction, a SAMI constitution), its ids within
    `budget` tokens).

    A long prompt loses its oldest text, never the instruction: a text prompt's ids are the
    instruction's (with BOS) followed by the tail of the prompt's own; a chat prompt (the
    instruction as a system message) drops its oldest turns until it fits."""
    if isinstance(prompt, list):
        turns = list(prompt)
        while True:
            conditioned = [{"role": "system", "content": instruction}] + turns
            ids = prompt_ids(tokenizer, conditioned)
            if len(ids) <= budget:
                return conditioned, ids
            if len(turns) == 1:
                raise ValueError(f"{source}: the instruction and the last turn need {len(ids)} tokens, "
                                 f"more than the prompt budget ({budget}); raise max_prompt_length")
            turns = turns[1:]
    head = tokenizer(f"{instruction}\n\n", add_special_tokens=True)["input_ids"]
    body = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(head) >= budget:
        raise ValueError(f"the instruction {instruction[:40]!r} needs {len(head)} tokens, the whole prompt budget "
                         f"({budget}): raise max_prompt_length (or max_length) or shorten it")
    return f"{instruction}\n\n{prompt}", head + body[max(0, len(body) - (budget - len(head))):]


class ImplicitRewardJudge:
    """The current policy's implicit reward beta * (log pi(y) - log pi_ref(y)) as a judge (self-rewarding
    with the DPO reward, arXiv 2502.08922's implicit judge); pi_ref is the starting model. It reads
    the sampled token ids, so nothing is re-tokenised."""

    name = "implicit_reward"
    can_score = True
    temperature = 1.0

    def __init__(self, run, beta: float):
        self.run, self.beta = run, beta

    def score_ids(self, prompts, ids) -> list[float]:
        from prefalign.online.samplers import Sample

        samples = [Sample(list(p), list(r), False, 0, 0) for p, r in ids]
        pad = self.run.tokenizer.pad_token_id
        policy = response_logps(self.run.model, samples, pad, self.run.cfg.eval_batch_size)
        reference = response_logps(self.run.reference_model, samples, pad, self.run.cfg.eval_batch_size)
        return [self.beta * (a - b) for a, b in zip(policy, reference)]

    def compare_ids(self, prompts, a, b) -> list[float]:
        from prefalign.judges.base import bt_probability

        return [bt_probability(x - y) for x, y in zip(self.score_ids(prompts, a), self.score_ids(prompts, b))]


class ConsistentJudge:
    """SCIR's consistent pairs (arXiv 2502.08922): P(a > b) of the first judge when the second prefers
    the same response, NaN ("judges disagree": the pair is dropped and counted) otherwise, a tie of
    either included."""

    name = "consistent"
    filters_pairs = True

    def __init__(self, first, second):
        self.first, self.second = first, second

    @property
    def can_score(self) -> bool:
        return self.first.can_score

    def score_raw(self, prompts, responses) -> list[float | None]:
        from prefalign.online.store import call_judge

        return call_judge(self.first, "score", prompts, [responses])

    def compare_raw(self, prompts, a, b) -> list[float | None]:
        from prefalign.online.store import call_judge

        p, q = call_judge(self.first, "compare", prompts, [a, b]), call_judge(self.second, "compare", prompts, [a, b])
        out = []
        for x, y in zip(p, q):
            if x is None or y is None:
                out.append(None)
            else:
                out.append(x if (x - 0.5) * (y - 0.5) > 0 else float("nan"))
        return out


def build_judge(run, name: str, args: dict):
    o = run.cfg.online
    if name == "implicit_reward":
        return ImplicitRewardJudge(run, float(run.params.get("beta", 0.1)))
    from prefalign.judges import make_judge

    args = dict(args)
    if o.direction and name == "reward_model":  # DPA: the judge scores v . r for the run's direction
        args.setdefault("direction", unit(o.direction))
    if o.judge_on_policy:  # the live policy module: the judge follows the policy from round to round
        args.update(model=run.model, tokenizer=run.tokenizer)
    return make_judge(name, **args)


def make_judge_for(run) -> tuple:
    """(the labeling judge, the evaluation judge): the same judge, or with online.consistency_judge the
    pair filter for labeling and the first judge alone for evaluation; (None, None) for SAMI."""
    o = run.cfg.online
    if not o.judge:
        return None, None
    judge = build_judge(run, o.judge, o.judge_args)
    if o.consistency_judge:
        return ConsistentJudge(judge, build_judge(run, o.consistency_judge, o.consistency_judge_args)), judge
    return judge, judge


def eval_settings(cfg: OnlineConfig) -> GenerateSettings:
    o = cfg.online
    return GenerateSettings(max_new_tokens=o.max_new_tokens, do_sample=o.eval_temperature > 0,
                            temperature=o.eval_temperature or 1.0, batch_size=o.sample_batch_size,
                            max_prompt_tokens=prompt_length(cfg))


def eval_samples(run, r: int, path: Path) -> tuple[list, float]:
    """The policy's held-out samples of round r (-1: the starting policy), drawn once and stored."""
    if path.exists():
        return load_samples(path), 0.0
    t0 = time.perf_counter()
    samples = HFSampler(run.model, run.tokenizer).sample([p.ids for p in run.eval_prompts], eval_settings(run.cfg),
                                                         sample_seed(run.cfg.seed, r, EVAL_STREAM))
    seconds = time.perf_counter() - t0
    save_samples(path, samples)
    return samples, seconds


def measure(run, r: int, samples: list, baseline: list | None, cache: VerdictCache) -> dict:
    pad = run.tokenizer.pad_token_id
    prompts = [p.prompt for p in run.eval_prompts]
    judge = None if run.eval_judge is None else CachedJudge(run.eval_judge, cache, judge_key(run, r, "eval"),
                                                            run.cfg.online.judge_batch_size, run.cfg.progress,
                                                            "evaluating")
    candidates = [(response_text(run.tokenizer, s), [s.prompt_ids, s.response_ids]) for s in samples]
    # one policy forward gives the sample log-probs and the top-k indicators
    policy, entropy, mass = policy_sample_stats(run.model, samples, pad, run.cfg.overopt_k, run.cfg.eval_batch_size)
    reference = response_logps(run.reference_model, samples, pad, run.cfg.eval_batch_size)
    per_prompt = {"kl": [a - b for a, b in zip(policy, reference)], "topk_entropy": entropy, "topk_mass": mass,
                  "response_tokens": [float(len(s.response_ids)) for s in samples],
                  "finished": [float(s.finished) for s in samples]}
    if judge is not None and judge.can_score:
        per_prompt["judge_score"] = judge.score(prompts, candidates)
    if judge is not None and baseline is not None:
        base = [(response_text(run.tokenizer, s), [s.prompt_ids, s.response_ids]) for s in baseline]
        per_prompt["win_vs_initial"] = judge.compare(prompts, candidates, base)
    return per_prompt


def initial_evaluation(run) -> dict | None:
    """rounds/initial_eval.json: the starting policy on the held-out prompts (before round 0)."""
    from prefalign.diagnostics.online import round_eval

    if not run.eval_prompts:
        return None
    folder = run.out / "rounds"
    path = folder / "initial_eval.json"
    if path.exists():
        return read_json(path)
    samples, seconds = eval_samples(run, -1, folder / "initial_samples.json")
    per_prompt = measure(run, -1, samples, None, VerdictCache(folder / "initial_verdicts.jsonl"))
    result = round_eval(-1, per_prompt, {}, run.cfg.online.bootstrap, run.cfg.seed)
    write_json_atomic(path, result)
    log_eval(run, 0, result)
    return result


def round_evaluation(run, r: int) -> dict:
    """Round r's eval.json content (the round's sampling throughput and label counts included)."""
    from prefalign.diagnostics.online import round_eval

    rdir = run.round_dir(r)
    extras = {}
    for name in ("sampling.json", "examples.json"):
        if (rdir / name).exists():
            value = read_json(rdir / name)
            extras.update(value if name == "sampling.json" else {"labels": value["counts"]})
    if not run.eval_prompts:
        result = {"round": r, "evaluated": False, **extras}
    else:
        samples, _ = eval_samples(run, r, rdir / "eval_samples.json")
        baseline = load_samples(run.out / "rounds" / "initial_samples.json")
        per_prompt = measure(run, r, samples, baseline, VerdictCache(rdir / "verdicts.jsonl"))
        result = round_eval(r, per_prompt, extras, run.cfg.online.bootstrap, run.cfg.seed)
    log_eval(run, (r + 1) * run.cfg.max_steps, result)
    return result


def log_eval(run, step: int, result: dict) -> None:
    from prefalign.diagnostics.online import metrics_line

    if "per_prompt" not in result:
        return
    line = {"round": result["round"], **metrics_line(result)}
    for sink in run.sinks:
        sink.log(step, line)
