"""Features the examples' own structure supplies: nothing to tokenize or compute beyond the list rows."""

from __future__ import annotations

from prefalign.features.registry import FeatureSupplier, supplier


@supplier
class Lengths(FeatureSupplier):
    name = "lengths"
    description = "response token counts (SeqLogps.n_tokens, always supplied)"


@supplier
class Scores(FeatureSupplier):
    name = "scores"
    description = "a list of K responses with scalar scores or ranks in `target`"


@supplier
class Samples(FeatureSupplier):
    name = "samples"
    description = "self-generated samples as extra list entries"


@supplier
class Unpaired(FeatureSupplier):
    name = "unpaired"
    description = "one response per example with a 0/1 desirability label in `target`"


@supplier
class Gold(FeatureSupplier):
    name = "gold"
    description = "a gold/reference response as an extra list entry (TPO: K = 3, column 0 gold)"

    def check(self, objective, examples, label):
        kinds = {e.kind for e in examples}
        if kinds != {"triple"}:
            raise ValueError(f"objective {objective.name!r} needs gold/chosen/rejected triples; {label} holds "
                             f"{sorted(kinds)}")
