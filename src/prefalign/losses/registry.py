"""The one list of objective names.

An objective is a pure function `fn(batch: SeqLogps, *, hyper=default, ...) -> LossOut`. Its
hyper-parameters are its keyword-only arguments; their defaults are read from the signature, so
there is no second list to keep in sync. CLI help, `prefalign objectives`, the README table and
the test parametrisation all come from `OBJECTIVES`. The features an objective declares are names
of feature suppliers (prefalign.features), which supply them in `SeqLogps.features`.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Callable

from prefalign.types import LossOut, SeqLogps

# "self_supervised": data built from the policy's own samples with no preference label (SAMI); online only
KINDS = ("pairwise", "listwise", "unpaired", "token_level", "multi_objective", "sft", "self_supervised")


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[..., LossOut]
    kind: str
    paper: str  # arXiv id of the paper whose final objective this implements ("" for plain SFT)
    needs_reference: bool
    features: tuple[str, ...]
    couples_batch: bool  # True when one example's loss depends on others in the micro-batch
    # What to tell a user who passes `beta` to an objective without one, when another of its
    # parameters plays beta's role (SPPO's eta = 1/beta); "" when none does.
    beta_hint: str = ""
    # Features a parameter value switches on: ((param, value, features), ...). ORPO's authors' NLL
    # over prompt and response needs the prompt tokens' log-probs, which the response-only default does not.
    features_when: tuple[tuple[str, object, tuple[str, ...]], ...] = ()

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def params(self) -> dict[str, object]:
        """Hyper-parameters and their defaults, read from the keyword-only arguments."""
        sig = inspect.signature(self.fn)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def features_for(self, params: dict) -> tuple[str, ...]:
        """The features a run with these hyper-parameters needs: the fixed ones, then any that a
        parameter value switches on."""
        extra = [f for key, value, feats in self.features_when if params.get(key, self.params.get(key)) == value
                 for f in feats if f not in self.features]
        return self.features + tuple(dict.fromkeys(extra))

    def __call__(self, batch: SeqLogps, **params) -> LossOut:
        unknown = set(params) - set(self.params)
        if unknown:
            raise TypeError(unknown_params_message(self, sorted(unknown)))
        return self.fn(batch, **params)


OBJECTIVES: dict[str, Objective] = {}


def objective(
    name: str,
    *,
    kind: str,
    paper: str,
    reference: bool,
    features: tuple[str, ...] = (),
    couples_batch: bool = False,
    beta_hint: str = "",
    features_when: tuple[tuple[str, object, tuple[str, ...]], ...] = (),
):
    """Decorator registering `fn` under `name`."""
    if kind not in KINDS:
        raise ValueError(f"objective {name!r}: kind {kind!r} is not one of {KINDS}")
    # feature names are checked against prefalign.features' suppliers when a run prepares its data
    # (run.prepare_examples): that package sits above the pure losses, which must not import it

    def register(fn: Callable[..., LossOut]) -> Callable[..., LossOut]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        sig = inspect.signature(fn).parameters
        unknown = [key for key, *_ in features_when if key not in sig]
        if unknown:
            raise ValueError(f"objective {name!r}: features_when names {unknown}, which are not its parameters")
        OBJECTIVES[name] = Objective(name, fn, kind, paper, reference, tuple(features), couples_batch, beta_hint,
                                     tuple(features_when))
        return fn

    return register


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(name, OBJECTIVES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown objective {name!r}.{hint} Available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def unknown_params_message(obj: Objective, unknown: list[str]) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, obj.params, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    valid = ", ".join(obj.params) or "none"
    return f"objective {obj.name!r} has no parameter {', '.join(parts)}; its parameters: {valid}"


def no_beta_message(obj: Objective) -> str:
    """The error for a `beta` given to an objective that has none: its own parameters, and which
    of them plays beta's role where one does."""
    valid = ", ".join(obj.params) or "none"
    hint = f" ({obj.beta_hint})" if obj.beta_hint else ""
    return f"objective {obj.name!r} has no beta; its parameters: {valid}{hint}"
