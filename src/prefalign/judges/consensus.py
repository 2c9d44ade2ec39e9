"""Consensus of several judges (SCIR, "Self-Consistency of the Internal Reward Models Improves
Self-Rewarding Language Models", arXiv:2502.08922).

SCIR asks several internal reward models of one LLM (its LLM-as-judge and its implicit DPO reward)
for the preference on each unlabeled pair and trains only on the pairs where they agree. Here the
members are any judges: compare() returns the members' mean P(a preferred) when every member
prefers the same side (all P > 1/2 or all P < 1/2), and None otherwise, with the reason counted:
"disagreement", "tie" (a member at exactly 1/2) or "member gave no verdict". The agreement rate
(agreeing pairs / pairs on which every member gave a verdict) is reported in extra_stats().

Departures: SCIR also trains the internal reward models with an inconsistency penalty so that
they agree more over time; that is a training objective, not a judge, and is not done here. The
mean probability as the consensus strength is this project's choice (SCIR uses the agreed label).
"""

from __future__ import annotations

from prefalign.judges.base import Judge, check_aligned, make_judge, register_judge


def build_members(members, member_args: dict) -> list[Judge]:
    """Judges from Judge objects, or names ("a,b" or a list) with "name.key" arguments."""
    if isinstance(members, str):
        members = [m.strip() for m in members.split(",") if m.strip()]
    members = list(members or [])
    names = {m for m in members if isinstance(m, str)}
    stray = {k for k in member_args if "." not in k or k.split(".", 1)[0] not in names}
    if stray:
        raise ValueError(f"consensus arguments must be 'member.key' for a named member; got {sorted(stray)}")
    built = []
    for m in members:
        if isinstance(m, Judge):
            built.append(m)
        else:
            built.append(make_judge(m, **{k.split(".", 1)[1]: v for k, v in member_args.items()
                                          if k.split(".", 1)[0] == m}))
    if len(built) < 2:
        raise ValueError(f"the consensus judge needs at least two member judges, got {len(built)}")
    return built


@register_judge("consensus")
class ConsensusJudge(Judge):
    """Keep a pair only when every member judge prefers the same side (SCIR, arXiv:2502.08922)."""

    def __init__(self, members=None, **member_args):
        super().__init__()
        self.members = build_members(members, member_args)
        self.agreed = 0
        self.disagreed = 0

    def compare(self, prompts, a, b):
        check_aligned(prompts, a, b)
        votes = [m.compare(prompts, a, b) for m in self.members]
        out = []
        for ps in zip(*votes):
            p, reason = self.combine(ps)
            self.stats.record(p, reason)
            out.append(p)
        return out

    def combine(self, ps) -> tuple[float | None, str | None]:
        if any(p is None for p in ps):
            return None, "member gave no verdict"
        if any(p == 0.5 for p in ps):
            return None, "tie"
        if all(p > 0.5 for p in ps) or all(p < 0.5 for p in ps):
            self.agreed += 1
            return sum(ps) / len(ps), None
        self.disagreed += 1
        return None, "disagreement"

    def extra_stats(self) -> dict:
        judged = self.agreed + self.disagreed
        return {"agreed": self.agreed, "disagreed": self.disagreed,
                "agreement_rate": self.agreed / judged if judged else None,
                "members": {f"{i}:{m.name}": m.stats.as_dict() for i, m in enumerate(self.members)}}
