"""One micro-batch: forward (policy and reference) -> SeqLogps -> objective -> metrics.

Everything an objective's declared features need beyond the K responses' summed log-probs comes
from their suppliers (prefalign.features): this step only runs the forwards they ask for and
collects what they compute.
"""

from __future__ import annotations

from prefalign.data.collate import Batch
from prefalign.features import Step, for_features
from prefalign.losses import Objective
from prefalign.models.causal_lm import model_args, sequence_sums
from prefalign.train.metrics import batch_metrics
from prefalign.types import LossOut, SeqLogps


def forward_batch(policy, batch: Batch, reference, objective: Objective) -> SeqLogps:
    """Chosen and rejected (all K responses) go through the policy in one concatenated forward,
    together with any supplier's extra policy rows (after the N list rows)."""
    # the objective's features, and those whose rows the batch carries (they change what the reference reads)
    active = for_features(set(objective.features) | set(batch.extras))
    wanted = {s.reference_output: True for s in active if s.reference_output}
    step = Step(policy, reference, batch)
    for s in active:
        s.check_step(step, active)
    if wanted:
        if reference is None or batch.reference_logps is not None:
            needs = [s.name for s in active if s.reference_output]
            raise ValueError(f"{needs} need a live reference model (reference=frozen or adapter_off)")
        # the reference goes first: the policy's token KL and mask head read its states
        step.reference_out = reference.features(batch, **wanted)
    if "rows" in wanted or "layers" in wanted:
        step.policy_out = policy(*model_args(batch), reference=step.reference_out.states)
    else:
        step.policy_out = {"token_logps": policy(*model_args(batch))}
    policy_sums, n_tokens = sequence_sums(step.token_logps, batch)
    ref_sums = None
    if batch.reference_logps is not None:
        ref_sums = batch.reference_logps.to(policy_sums.dtype)
    elif reference is not None:
        rows = next((r for s in active if (r := s.reference_rows(batch)) is not None), batch)
        step.reference_token_logps = step.reference_out.token_logps if step.reference_out is not None else reference(rows)
        ref_sums, _ = sequence_sums(step.reference_token_logps, rows)
    features = {name: value for s in active for name, value in s.compute(step).items()}
    return SeqLogps(policy=policy_sums, reference=ref_sums, n_tokens=n_tokens, valid=batch.valid,
                    target=batch.target.to(policy_sums.dtype), features=features)


def run_objective(objective: Objective, seq: SeqLogps, params: dict) -> tuple[LossOut, dict]:
    out = objective(seq, **params)
    return out, batch_metrics(seq, out)
