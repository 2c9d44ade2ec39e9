"""Method presets of `prefalign online`: each is the set of config values a paper's round uses.

A preset only fills keys the user left out (the config file and key=value overrides win), and
`prefalign online --methods` prints every preset with the paper behind it. Anything a preset
leaves unset keeps the OnlineOptions / TrainConfig default. Where the papers or public recipes
disagree on a value that changes the result (which reference), the preset sets nothing and the
run refuses to start until the user chooses (ONLINE.md: RLHFlow and OpenRLHF differ on it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    paper: str  # arXiv id ("" for a recipe without one)
    summary: str
    values: dict  # config tree values: top-level keys and an "online" mapping
    unconfirmed: str = ""  # what could not be confirmed from the paper or its code


def pairs(objective: str, **online) -> dict:
    return {"objective": objective, "online": online}


METHODS = {m.name: m for m in [
    Method("online_dpo", "2402.04792",
           "Online AI feedback (OAIF) / TRL's Online DPO: two samples of the current policy per prompt, the judge "
           "picks one, any pairwise objective (objective: ipo, hinge, ... replaces dpo); reference fixed.",
           {**pairs("dpo", pairing="two_samples", samples_per_prompt=2, reference="fixed", temperature=0.9,
                    max_new_tokens=64)},
           "OAIF trains one step per fresh batch; here a round trains max_steps steps on its samples "
           "(max_steps: 1 is the per-batch form)."),
    Method("iterative_dpo", "",
           "Iterative DPO (RLHFlow / OpenRLHF recipes): K = 8 samples at T = 1.0 per prompt, a reward model "
           "ranks them, best vs worst, DPO for max_steps; the reference is a required choice.",
           {**pairs("dpo", pairing="best_vs_worst", samples_per_prompt=8, temperature=1.0)},
           "the two public recipes disagree on the reference (fixed initial model vs previous iterate), so "
           "online.reference must be set."),
    Method("xpo", "2405.21046",
           "Exploratory Preference Optimization: one sample from the policy and one from the reference, judged "
           "against each other; DPO plus alpha * log pi(y_ref) (objective xpo, alpha 1e-5 as TRL).",
           {**pairs("xpo", pairing="policy_vs_reference", samples_per_prompt=1, reference="fixed")},
           "the paper's algorithm may accumulate all past pairs; each round here trains on its own pairs."),
    Method("selm", "2405.19332",
           "Self-Exploring Language Models: one greedy sample of the round-start policy ranked with the data's "
           "chosen and rejected by the judge, best vs worst; objective selm (beta 0.01, alpha 1e-3), reference "
           "the previous iterate.",
           {**pairs("selm", pairing="candidates_plus_data", samples_per_prompt=1, reference="previous")},
           "the authors split the prompts into 4 slices with plain DPO in round 1; here every round uses selm "
           "(alpha 0 makes it DPO)."),
    Method("sppo", "2405.00675",
           "Self-Play Preference Optimization: K = 5 samples at T 0.7, top_p 0.9; P(i > j) from the judge with the "
           "diagonal 1/2; P_hat_k = mean_j; objective sppo (eta 1000) on all K; reference the round-start policy.",
           {**pairs("sppo", pairing="all_k", samples_per_prompt=5, temperature=0.7, top_p=0.9,
                    reference="previous")},
           "the authors train with RMSprop; prefalign's loop uses AdamW."),
    Method("nash_md", "2312.00886",
           "Nash-MD (policy-gradient form): y from the policy, y' from the geometric mixture pi^(1-b) mu^b (b 0.5) "
           "decoded token by token with KV caches; p = P(y > y') from the judge; objective nash_md; reference fixed.",
           {**pairs("nash_md", pairing="policy_vs_mixture", samples_per_prompt=1, reference="fixed",
                    mixture_weight=0.5)},
           "see the nash_md objective's docstring for the form of the KL term."),
    Method("ipo_md", "2403.08635",
           "IPO-MD (online IPO with the Nash-MD mixture): both responses sampled from the mixture pi^(1-b) mu^b, "
           "judged, objective ipo; reference fixed.",
           {**pairs("ipo", pairing="two_samples", samples_per_prompt=2, reference="fixed", sampler="mixture",
                    mixture_weight=0.5)},
           "hard vs soft labels unconfirmed from the abstract: hard labels by default (label_draws 0)."),
    Method("apo", "2410.06293",
           "Anchored/accelerated preference optimisation as iterative DPO with momentum: after each round "
           "pi_(t+1) ~ pi_t (pi_t / pi_(t-1))^alpha, in weight space (default) or logit space.",
           {**pairs("dpo", pairing="best_vs_worst", samples_per_prompt=4, reference="previous", apo_alpha=0.3)},
           "weight space vs logit space and the value of alpha are not confirmed from the abstract; 3 rounds "
           "are reported. In logit space (online.apo_space: logits) the extrapolated policy has no weights: from "
           "round 1 on the round's samples are drawn token by token from softmax((1 + alpha) log pi_t - alpha "
           "log pi_(t-1)), while the reference log-probs, the weights saved and the per-round evaluation are "
           "those of the trained iterate pi_t."),
    Method("irepo", "2405.15230",
           "iREPO: two samples per prompt, M = 5 seeded judge draws give p_hat (the share preferring the chosen), "
           "objective irepo regresses beta * (h_w - h_l) on logit(p_hat); reference the round-start policy.",
           {**pairs("irepo", pairing="two_samples", samples_per_prompt=2, reference="previous", label_draws=5)},
           "M annotators are simulated by M Bernoulli draws from the judge's probability."),
    Method("dpa_rft", "2402.18571",
           "Directional preference alignment, rejection-sampling fine-tuning: the direction v is written into "
           "each prompt, 4 samples per prompt, a multi-objective reward model scores v . r, the argmax is the SFT "
           "target (objective sft).",
           {**pairs("sft", pairing="best_of_n", samples_per_prompt=4, direction=[0.7071, 0.7071])},
           "one direction per run: the paper draws v = (cos t, sin t) with t in [-45, 45] degrees per prompt; "
           "the instruction's wording is a template (online.direction_template)."),
    Method("self_rewarding", "2401.10020",
           "Self-rewarding with SCIR (2502.08922): 4 samples per prompt, the policy grades them as its own LLM "
           "judge (rubric, bound to the current policy), best vs worst, kept only when its implicit reward "
           "agrees; objective scir: DPO plus the consistency term KL(judge's P || the implicit reward's P) "
           "(objective_args consistency, 1.0); reference the previous iterate.",
           {**pairs("scir", pairing="best_vs_worst", samples_per_prompt=4, reference="previous", judge="rubric",
                    judge_on_policy=True, consistency_judge="implicit_reward")},
           "SCIR's divergence and its weight are not confirmed (see the scir objective); its term trains both "
           "reward views, here only the implicit one (the judge's verdicts are cached numbers); the implicit "
           "reward is measured against the starting model (or reference_model), so a run that starts from it "
           "keeps no pair until the policy has moved."),
    Method("sami", "2404.14313",
           "SAMI: per query one greedy response under each constitution (online.constitutions, e.g. a principle and "
           "its antithesis); objective sami, the symmetric InfoNCE over the C x C matrix of mean-token log pi(y_j | "
           "c_i, x); no judge, no reference, no KL term.",
           {**pairs("sami", pairing="constitutions", samples_per_prompt=1)},
           "the authors train with RMSprop at lr 5e-7; prefalign's loop uses AdamW (set learning_rate)."),
    Method("ofs_dpo", "2406.05534",
           "Online fast-slow chasing DPO: two LoRA modules on one base (lora: true), the fast one (the policy) at "
           "learning_rate, the slow one online.ofs_lr_ratio (4) times slower, both trained by the objective (dpo) on "
           "each round's pairs plus online.ofs_chase (1.0) * -log sigmoid(m_fast - sg(m_slow)), m the DPO margin; "
           "pairs as online_dpo (two samples, the judge picks); reference fixed.",
           {**pairs("dpo", pairing="two_samples", samples_per_prompt=2, reference="fixed"), "lora": True},
           "only the abstract and summaries could be read: the regulariser's exact form (here DPO of the fast "
           "module against the slow one, the slow one not moved by it), the learning-rate ratio and the rule by "
           "which the two modules swap roles (not implemented: the roles are fixed). The paper trains on a given "
           "stream of preference pairs; here each round's pairs are sampled and judged."),
    Method("cofs_dpo", "2406.05534",
           "Cross-domain OFS-DPO: OFS-DPO over a stream of domains (data.train, then each online.domains file, the "
           "rounds split evenly); after each domain its fast module is kept, and from the second domain on the fast "
           "module becomes the combination sum_d w_d fast_d (online.cofs_weights, uniform by default).",
           {**pairs("dpo", pairing="two_samples", samples_per_prompt=2, reference="fixed"), "lora": True},
           "as ofs_dpo; also how the paper picks the combination weights (given or uniform here), and whether the "
           "combined module or the last domain's continues training (the combination does here)."),
    Method("custom", "", "No preset: only the keys you give (objective, online.pairing, online.reference, ...).",
           {}),
]}


def apply_method(tree: dict) -> dict:
    """The config tree with the method preset's values under the user's (the user's keys win)."""
    online = tree.get("online") or {}
    if not isinstance(online, dict):
        return tree  # build() names the type error
    name = online.get("method", "online_dpo")
    if name not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(name), METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(METHODS)}"
        raise ValueError(f"unknown online.method {name!r}{hint}")
    merged = copy.deepcopy(METHODS[name].values)
    for key, value in tree.items():
        if key == "online":
            merged.setdefault("online", {}).update(value)
        else:
            merged[key] = value
    merged.setdefault("online", {})["method"] = name
    return merged


def methods_table() -> str:
    rows = ["method | paper | what a round does | not confirmed", "--- | --- | --- | ---"]
    for m in METHODS.values():
        rows.append(f"{m.name} | {m.paper or '-'} | {m.summary} | {m.unconfirmed or '-'}")
    return "\n".join(rows)
