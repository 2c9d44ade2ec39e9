"""`prefalign online`: rounds of sample -> label -> build -> reference log-probs -> train -> after the
round -> evaluate, composed from the samplers, a judge, a pairing rule and the one training loop.

Every phase of round N is written atomically under output_dir/rounds/round-N/ (samples per shard,
verdicts.jsonl, examples.json, reference.safetensors, train/ checkpoints, policy/, eval.json), so
`resume=true` after a kill redoes only what is missing. Each phase is a function of files already
written and of seeds derived from (seed, round, shard), and each round's training starts from
re-seeded RNGs and a fresh optimizer: a resumed run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from prefalign.config import OnlineConfig, prompt_length, to_dict
from prefalign.data.tokenize import RowBuilder
from prefalign.features import for_features
from prefalign.logging import progress_iter
from prefalign.losses import get_objective
from prefalign.models.causal_lm import PolicyLogps, load_model, load_tokenizer, with_reference
from prefalign.models.generation import GenerateSettings
from prefalign.models.hub import resolve_model
from prefalign.online.examples import RoundPrompt, build_examples
from prefalign.online.fast_slow import FastSlowTrainee, add_slow_module, domain_end, domain_of, param_groups
from prefalign.online.pairing import RULE_KINDS, RULE_SOURCES, Candidate, label_round, produced_features
from prefalign.online.samplers import HFSampler, MixtureSampler, extrapolation_weights, previous_iterate, sample_seed
from prefalign.online.store import CachedJudge, VerdictCache, load_samples, read_json, save_samples, write_json_atomic
from prefalign.recipes.online_setup import (OffsetSink, initial_evaluation, judge_key, load_domain_prompts,
                                            load_round_prompts, make_judge_for, response_text, round_evaluation)
from prefalign.recipes.policy import ACCEPTS, compute_reference_logps, objective_params, setup_policy
from prefalign.recipes.run_folders import RUN_OUTPUTS, claim_run_dir
from prefalign.recipes.setup import loop_settings, metric_sinks, open_run_folder, optimizer_and_scheduler
from prefalign.train.checkpoint import write_atomic
from prefalign.train.loop import LoopParts, train_loop
from prefalign.train.trainee import PolicyTrainee

ONLINE_OUTPUTS = RUN_OUTPUTS + ("rounds",)
STRUCTURAL = {"scores", "samples", "unpaired", "gold"}  # features that are the data's own labels
ONLINE_MARKERS = ("config.yaml", "summary.json", "final", "rounds")  # resume needs no checkpoint-N: rounds are
# offsets of the shard numbers of each sampling stream, so no two streams share a seed
STREAM = {"main": 0, "policy": 0, "greedy": 0, "reference": 100_000, "mixture": 100_000, "eval": 200_000,
          **{f"c{i}": 500_000 + 1000 * i for i in range(64)}}


@dataclass
class Run:
    """What every phase of every round reads."""

    cfg: OnlineConfig
    acc: object
    out: Path
    objective: object
    params: dict
    tokenizer: object
    policy: torch.nn.Module  # PolicyLogps, prepared by accelerate
    reference_model: torch.nn.Module  # the starting model, frozen: the fixed reference, mu, KL's reference
    judge: object
    prompts: list[RoundPrompt]
    eval_prompts: list[RoundPrompt]
    sinks: list
    data_report: dict
    vllm: object = None  # the vLLM sampler, built on first use (online.sampler: vllm)
    eval_judge: object = None  # the judge of the per-round evaluation (without SCIR's consistency filter)
    initial_model: object = None  # APO in logit space: the starting policy, frozen (the first "previous iterate")
    domains: list = None  # the prompts of each domain after data.train's (online.domains)

    @property
    def model(self):  # the HF model inside the trained policy (what samplers generate with)
        return self.acc.unwrap_model(self.policy).model

    def round_dir(self, r: int) -> Path:
        return self.out / "rounds" / f"round-{r}"


def check_objective(obj, rule: str) -> None:
    """Fail before round 0 when the pairing cannot feed the objective (kinds, features, live reference)."""
    kind = RULE_KINDS[rule]
    if (obj.kind == "self_supervised") != (rule == "constitutions"):
        raise ValueError(f"objective {obj.name!r} ({obj.kind}) and online pairing {rule!r} do not fit: the "
                         "self-supervised objective sami trains on the constitutions pairing, and only it does")
    accepted = ACCEPTS.get(obj.kind, set()) | ({"contrastive"} if obj.kind == "self_supervised" else set())
    if kind not in accepted:
        fitting = sorted(r for r, k in RULE_KINDS.items() if k in accepted)
        raise ValueError(f"objective {obj.name!r} ({obj.kind}) cannot train on the {kind} examples that pairing "
                         f"{rule!r} builds; pairings that fit it: {fitting or 'none (it cannot run online)'}")
    live = [s.name for s in for_features(obj.features) if s.reference_output or s.live_reference]
    if live:
        raise ValueError(f"objective {obj.name!r} needs {live} from a live reference forward; online rounds "
                         "precompute the reference log-probs of each round's examples")
    # features read from the data (row fields, list scores, labels) must come from the pairing; the
    # rest (lengths, NLL terms) the step computes from the rows themselves
    from_data = {s.name for s in for_features(obj.features) if s.row_field} | (set(obj.features) & STRUCTURAL)
    missing = sorted(from_data - produced_features(rule))
    if missing:
        raise ValueError(f"objective {obj.name!r} needs {missing}, which online pairing {rule!r} does not produce "
                         f"(it produces {sorted(produced_features(rule))}); see the objective's docstring")


def online(cfg: OnlineConfig) -> dict:
    """Run (or resume) an online job; returns the summary also written to output_dir/summary.json."""
    started = time.time()
    trust = cfg.trust_remote_code
    # resolved first: a Hub id missing offline fails before a run folder exists, and the commits are pinned
    commit = resolve_model(cfg.model, cfg.model_revision, trust)[1]
    reference_commit = resolve_model(cfg.reference_model, cfg.reference_model_revision, trust)[1] \
        if cfg.reference_model else None
    out = Path(cfg.output_dir)
    earlier = claim_run_dir(out, cfg.resume, cfg.overwrite, ONLINE_OUTPUTS, ONLINE_MARKERS, "online")
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=cfg.mixed_precision)
    if acc.num_processes > 1:
        raise ValueError("prefalign online runs in one process for now (sampling and labeling are not sharded)")
    obj = get_objective(cfg.objective)
    params = objective_params(obj, cfg.beta, cfg.objective_args)
    obj = replace(obj, features=obj.features_for(params))
    check_objective(obj, cfg.online.pairing)
    tokenizer = load_tokenizer(cfg.model, cfg.model_revision, trust)
    data_report: dict = {}
    prompts, eval_prompts = load_round_prompts(cfg, tokenizer, data_report)
    set_seed(cfg.seed)
    model = load_model(cfg.model, cfg.dtype, cfg.gradient_checkpointing, revision=cfg.model_revision,
                       trust_remote_code=trust)
    # the fixed reference (and mu, and the KL's reference): reference_model when given, else the starting weights
    reference_model = load_model(cfg.reference_model or cfg.model, cfg.dtype, revision=cfg.reference_model_revision
                                 if cfg.reference_model else cfg.model_revision,
                                 trust_remote_code=trust).eval().requires_grad_(False)
    trained = setup_policy(cfg, obj, model)
    if fast_slow(cfg):  # OFS/COFS-DPO: the slow LoRA module beside the policy's (fast) one
        add_slow_module(trained.model)
    policy = acc.prepare(trained)
    out.mkdir(parents=True, exist_ok=True)
    open_run_folder(acc, cfg, out, earlier, {"model_revision": commit, "reference_model_revision": reference_commit})
    run = Run(cfg, acc, out, obj, params, tokenizer, policy, reference_model, None, prompts, eval_prompts,
              metric_sinks(acc, out, cfg), data_report)
    run.judge, run.eval_judge = make_judge_for(run)
    run.domains = load_domain_prompts(cfg, tokenizer, data_report)
    if apo_in_logits(cfg):  # copied before resume_point loads a later round's weights into the policy
        run.initial_model = copy.deepcopy(run.model).eval().requires_grad_(False)
    try:
        initial = initial_evaluation(run)  # before any round's weights are loaded: the starting policy
        first = resume_point(run)
        for r in range(first, cfg.online.rounds):
            run_round(run, r)
    finally:
        for sink in run.sinks:
            sink.close()
    return finish(run, initial, commit, started)


def resume_point(run: Run) -> int:
    """The first round without eval.json; the policy is loaded from the round before it."""
    r = 0
    while (run.round_dir(r) / "eval.json").exists() and r < run.cfg.online.rounds:
        r += 1
    if r > 0:
        make_trainee(run).load(run.round_dir(r - 1) / "policy")
        run.acc.print(f"resumed online run at round {r}")
    return r


def fast_slow(cfg) -> bool:
    return cfg.online.method in ("ofs_dpo", "cofs_dpo")


def make_trainee(run: Run) -> PolicyTrainee:
    args = (run.acc, run.policy, run.objective, run.params, None, run.tokenizer, run.cfg.pad_to_multiple_of or 1)
    return FastSlowTrainee(*args, chase=run.cfg.online.ofs_chase) if fast_slow(run.cfg) else PolicyTrainee(*args)


def run_round(run: Run, r: int) -> None:
    cfg, rdir = run.cfg, run.round_dir(r)
    trainee = make_trainee(run)
    if (rdir / "policy").exists():  # trained before the kill; only the evaluation is missing
        trainee.load(rdir / "policy")
    else:
        prompts = round_slice(run, r)
        samples, sampling = sample_round(run, r, prompts)
        cache = VerdictCache(rdir / "verdicts.jsonl")
        specs = label_phase(run, r, prompts, samples, cache)
        builder = RowBuilder(run.tokenizer, cfg.max_length, prompt_length(cfg), {})
        examples = build_examples(specs, prompts, samples, builder, r, run.objective.features)
        if examples:
            examples = reference_phase(run, r, examples)
            train_phase(run, r, trainee, examples)
        else:  # every pair tied or its judges disagreed (judges bound to the policy, before it moved)
            run.acc.print(f"round {r}: no pair was labeled ({counts_text(run, r)}); no training this round")
            domain_end(cfg, run.model, run.round_dir, r)
            write_atomic(rdir / "policy", trainee.save)
        if sampling["tokens"]:  # this process drew samples: their throughput goes into eval.json
            write_json_atomic(rdir / "sampling.json", sampling)
    evaluation = round_evaluation(run, r)
    write_json_atomic(rdir / "eval.json", evaluation)


def round_slice(run: Run, r: int) -> list[RoundPrompt]:
    """Round r's prompts: the next prompts_per_round of a seeded permutation, wrapping around."""
    d = domain_of(run.cfg, r)
    pool = run.prompts if d == 0 else run.domains[d - 1]
    n, k = len(pool), run.cfg.online.prompts_per_round
    order = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed(run.cfg.seed, -1, d))).tolist()
    return [pool[order[(r * k + j) % n]] for j in range(k)]


def apo_in_logits(cfg) -> bool:
    return cfg.online.method == "apo" and cfg.online.apo_space == "logits"


def mixed(run: Run, source: str, r: int) -> bool:
    """Whether `source` is drawn token by token from a mixture: Nash-MD's / IPO-MD's pi^(1-b) mu^b, or
    APO's extrapolation in logit space from round 1 on (round 0 has no earlier iterate)."""
    o = run.cfg.online
    main = source == "main" and (o.sampler == "mixture" or (apo_in_logits(run.cfg) and r >= 1))
    return source == "mixture" or main


def settings_for(run: Run, source: str, n: int, r: int = 0) -> GenerateSettings:
    o = run.cfg.online
    mixture = mixed(run, source, r)
    greedy = source == "greedy" or (source[:1] == "c" and source[1:].isdigit())  # SELM's and SAMI's samples
    return GenerateSettings(max_new_tokens=o.max_new_tokens, do_sample=not greedy, temperature=o.temperature,
                            top_p=1.0 if mixture else o.top_p, top_k=0 if mixture else o.top_k,
                            batch_size=o.sample_batch_size, num_return_sequences=n,
                            max_prompt_tokens=prompt_length(run.cfg))


def sampler_for(run: Run, source: str, r: int = 0):
    o = run.cfg.online
    if source == "reference":
        return HFSampler(run.reference_model, run.tokenizer)
    if source == "main" and apo_in_logits(run.cfg) and r >= 1:
        # APO in logit space: the next iterate pi_hat (pi_hat / pi_prev)^alpha is only a distribution
        # (no weights give it), so rounds after the first sample it token by token
        return MixtureSampler([run.model, previous_iterate(run.initial_model, run.round_dir, r)], extrapolation_weights(o.apo_alpha),
                              run.tokenizer)
    if mixed(run, source, r):
        b = o.mixture_weight
        return MixtureSampler([run.model, run.reference_model], [1.0 - b, b], run.tokenizer)
    if o.sampler == "vllm" and source in ("main", "policy", "greedy"):
        if run.vllm is None:
            from prefalign.online.vllm_sampler import VLLMSampler

            folder = resolve_model(run.cfg.model, run.cfg.model_revision, run.cfg.trust_remote_code)[0]
            run.vllm = VLLMSampler(run.model, run.tokenizer, folder, tolerance=o.vllm_probe_tolerance,
                                   dtype=run.cfg.dtype, gpu_memory_utilization=o.vllm_gpu_memory_utilization)
        run.vllm.sync(run.model)  # this round's weights, checked on the probe before any sample is drawn
        return run.vllm
    return HFSampler(run.model, run.tokenizer)


def sample_round(run: Run, r: int, prompts: list[RoundPrompt]) -> tuple[dict, dict]:
    """{source: samples per prompt}, each shard drawn with its own seed and written when drawn."""
    o, out, stats = run.cfg.online, {}, {"tokens": 0, "seconds": 0.0}
    sources = [(f"c{i}", 1) for i in range(len(o.constitutions))] if o.pairing == "constitutions" \
        else RULE_SOURCES[o.pairing]
    for source, count in sources:
        n = o.samples_per_prompt if count == "n" else count
        sampler, settings = sampler_for(run, source, r), settings_for(run, source, n, r)
        per_prompt: list[list] = [[] for _ in prompts]
        starts = list(enumerate(range(0, len(prompts), o.shard_size)))
        for shard, start in progress_iter(starts, f"round {r}: sampling ({source})", enabled=run.cfg.progress):
            path = run.round_dir(r) / "samples" / f"{source}-{shard:05d}.json"
            if path.exists():
                drawn = load_samples(path)
            else:
                t0 = time.perf_counter()
                chunk = [p.ids_for(source) for p in prompts[start:start + o.shard_size]]
                drawn = sampler.sample(chunk, settings, sample_seed(run.cfg.seed, r, STREAM[source] + shard))
                stats["seconds"] += time.perf_counter() - t0
                stats["tokens"] += sum(len(s.response_ids) for s in drawn)
                save_samples(path, drawn)
            for s in drawn:
                per_prompt[start + s.prompt_index].append(s)
        out[source] = per_prompt
    stats["tokens_per_s"] = stats["tokens"] / stats["seconds"] if stats["seconds"] else None
    return out, stats


def data_text(response) -> str:
    return response if isinstance(response, str) else "\n".join(m["content"] for m in response)


def label_phase(run: Run, r: int, prompts: list[RoundPrompt], samples: dict, cache: VerdictCache) -> list[dict]:
    path = run.round_dir(r) / "examples.json"
    if path.exists():
        return read_json(path)["specs"]
    candidates = {source: [[Candidate([source, k], response_text(run.tokenizer, s), [s.prompt_ids, s.response_ids])
                            for k, s in enumerate(group)] for group in groups]
                  for source, groups in samples.items()}
    if run.cfg.online.pairing == "candidates_plus_data":
        if any(len(p.data_responses) < 2 for p in prompts):
            raise ValueError("pairing candidates_plus_data ranks the data's chosen and rejected with the sample: "
                             "data.train must hold preference pairs")
        candidates["data"] = [[Candidate(["data", j], data_text(p.data_responses[j])) for j in (0, 1)]
                              for p in prompts]
    judge = None if run.judge is None else CachedJudge(run.judge, cache, judge_key(run, r),
                                                       run.cfg.online.judge_batch_size, run.cfg.progress,
                                                       f"round {r}: labeling")
    specs, counts = label_round(run.cfg.online.pairing, [p.prompt for p in prompts], candidates, judge,
                                run.cfg.online.label_draws, run.cfg.seed, r)
    if not specs and not set(counts.dropped) <= {"tie", "judges disagree"}:
        raise ValueError(f"round {r}: the judge labeled no examples ({counts.as_dict()})")
    # only what the verdicts decide goes here (a resumed run writes the same bytes); the questions asked
    # are the lines of verdicts.jsonl
    write_json_atomic(path, {"specs": specs, "counts": counts.as_dict()})
    return specs


def counts_text(run: Run, r: int) -> str:
    return json.dumps(read_json(run.round_dir(r) / "examples.json")["counts"]["dropped_by_reason"])


def reference_phase(run: Run, r: int, examples: list) -> list:
    """The examples with their reference log-probs: the starting model's (fixed) or the round-start
    policy's (previous), computed before the round's first update and stored with the round."""
    if not run.objective.needs_reference:
        return examples
    path = run.round_dir(r) / "reference.safetensors"
    if path.exists():
        values = load_file(str(path))
    else:
        source = run.reference_model if run.cfg.online.reference == "fixed" else run.model
        probe = PolicyLogps(source, run.cfg.logps_impl).to(run.acc.device)
        values = compute_reference_logps(probe, examples, run.tokenizer.pad_token_id, run.acc.device,
                                         run.cfg.eval_batch_size)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in values.items()}, str(tmp))
        os.replace(tmp, path)
    return with_reference(examples, values, 0)


def train_phase(run: Run, r: int, trainee: PolicyTrainee, examples: list) -> None:
    cfg, rdir = run.cfg, run.round_dir(r)
    seed = sample_seed(cfg.seed, r, 400_000) % 2**31
    set_seed(seed)  # every round's training starts from the same RNG state, resumed or not
    trainable = [p for p in run.policy.parameters() if p.requires_grad]
    groups = param_groups(run.model, cfg.learning_rate, cfg.online.ofs_lr_ratio) if fast_slow(cfg) else trainable
    weight_space = cfg.online.method == "apo" and cfg.online.apo_space == "weights"
    before = [p.detach().clone() for p in trainable] if weight_space else None
    optimizer, scheduler = optimizer_and_scheduler(groups, cfg)
    optimizer = run.acc.prepare_optimizer(optimizer)
    sinks = [OffsetSink(s, r * cfg.max_steps, r) for s in run.sinks]
    settings = replace(loop_settings(cfg, rdir / "train", False), seed=seed, eval_steps=0)
    (rdir / "train").mkdir(parents=True, exist_ok=True)
    train_loop(LoopParts(run.acc, trainee, optimizer, scheduler, examples, [], sinks), settings)
    if before is not None:
        extrapolate(trainable, before, cfg.online.apo_alpha)
    domain_end(cfg, run.model, run.round_dir, r)
    write_atomic(rdir / "policy", trainee.save)


@torch.no_grad()
def extrapolate(params: list, before: list, alpha: float) -> None:
    """APO in weight space: theta_(t+1) = theta_hat + alpha * (theta_hat - theta_t)."""
    for p, b in zip(params, before):
        p.add_(alpha * (p - b))


def finish(run: Run, initial: dict | None, commit: str | None, started: float) -> dict:
    from prefalign.diagnostics.online import paired_difference

    cfg = run.cfg
    rounds = []
    for r in range(cfg.online.rounds):
        rdir = run.round_dir(r)
        labels = read_json(rdir / "examples.json") if (rdir / "examples.json").exists() else {}
        evaluation = read_json(rdir / "eval.json")
        verdicts = rdir / "verdicts.jsonl"
        asked = len(verdicts.read_text().splitlines()) if verdicts.exists() else 0
        rounds.append({"round": r, "labels": labels.get("counts"), "judge_questions": asked,
                       "eval": evaluation.get("metrics", {}), "trained": (rdir / "train").exists(),
                       "sampling_tokens_per_s": evaluation.get("tokens_per_s")})
    summary = {"method": cfg.online.method, "objective": run.objective.name, "objective_params": run.params,
               "pairing": cfg.online.pairing, "reference": cfg.online.reference, "data": run.data_report,
               "held_out_prompts": len(run.eval_prompts), "rounds": rounds,
               "initial_eval": (initial or {}).get("metrics", {}),
               "model_commit": commit, "wall_time_s": round(time.time() - started, 2), "config": to_dict(cfg)}
    last = read_json(run.round_dir(cfg.online.rounds - 1) / "eval.json")
    if initial and "judge_score" in initial.get("per_prompt", {}):
        summary["judge_score_change"] = paired_difference(initial["per_prompt"]["judge_score"],
                                                          last["per_prompt"]["judge_score"], cfg.online.bootstrap,
                                                          cfg.seed)
    final = run.out / "final"
    write_atomic(final, lambda tmp: save_policy(run, tmp))
    summary["final_model"] = str(final)
    (run.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    run.acc.end_training()
    return summary


def save_policy(run: Run, folder: Path) -> None:
    """final/ holds the last round's policy (already in memory)."""
    make_trainee(run).save(folder)

