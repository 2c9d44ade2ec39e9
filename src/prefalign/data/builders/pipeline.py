"""Data builders as composable steps: each is a function from examples to examples plus a report.

    @data_builder("best_vs_worst_pairs")
    def f(examples: list[Example], *, param=..., context: BuildContext) -> tuple[list[Example], report]

`report` is any object with `as_dict()` saying what went in, what came out and what was dropped
and why (nothing is dropped silently). A training config lists builders under `data.builders`,
each `{name: ..., **params}`; `prefalign data NAME` runs one from the command line. Builders
that need a judge, an encoder or a generator receive them through `context` (built by the
caller), so this module never imports a model.
"""

from __future__ import annotations

import inspect

# Builders defined in their own modules register themselves when imported; importing them here
# makes the registry complete for whoever imports the pipeline.
from prefalign.data.builders import negatives, rso, selection  # noqa: F401
from prefalign.data.records import Example
from prefalign.data.builders.registry import BUILDERS, Builder, BuildContext, data_builder  # noqa: F401  (public names)


def load_all_builders() -> dict[str, Builder]:
    """Import every module of prefalign.data so that each @data_builder registers, whoever wrote it.

    The registry is the one list of builders: the CLI, configs and docs read it after this call,
    so a new builder module needs no import added anywhere else.
    """
    import importlib
    import pkgutil

    # the package this module sits in, by its own name: a move of the builders keeps this true
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{info.name}")
    return BUILDERS


def run_builder(name: str, examples: list[Example], params: dict | None = None,
                context: BuildContext | None = None) -> tuple[list[Example], dict]:
    load_all_builders()
    if name not in BUILDERS:
        raise ValueError(f"unknown data builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    b = BUILDERS[name]
    params = dict(params or {})
    unknown = set(params) - set(b.params())
    if unknown:
        raise ValueError(f"data builder {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(b.params())}")
    kwargs = dict(params)
    if "context" in inspect.signature(b.fn).parameters:
        kwargs["context"] = context or BuildContext()
    out, report = b.fn(examples, **kwargs)
    return out, {"builder": name, "in": len(examples), "out": len(out), **report.as_dict()}


def run_builders(examples: list[Example], specs: list[dict], context: BuildContext | None = None):
    """Apply `[{name: ..., **params}, ...]` in order; returns the examples and one report per step."""
    reports = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"data.builders[{i}] must be a mapping with a 'name' key, got {spec!r}")
        params = {k: v for k, v in spec.items() if k != "name"}
        examples, report = run_builder(spec["name"], examples, params, context)
        reports.append(report)
    return examples, reports

