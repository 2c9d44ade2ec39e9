"""The data-builder registry: `@data_builder(name)` adds a function to BUILDERS.

A builder module imports only this registry; pipeline.py runs builders and imports the builder
modules so that the registry is complete. Kept apart from pipeline.py so that no builder module
has to import the module that imports it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class BuildContext:
    """What a builder may need beyond examples: built by the CLI / run from the config."""

    judge: Any = None  # prefalign.judges.Judge
    encoder: Any = None  # object with encode(texts) -> [N, H] unit vectors
    generator: Any = None  # callable(prompts, settings) -> list[list[str]]
    seed: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Builder:
    name: str
    fn: Callable
    summary: str
    paper: str  # arXiv id or "" for plain utilities

    def params(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {p.name: p.default for p in sig.parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name != "context"}


BUILDERS: dict[str, Builder] = {}


def data_builder(name: str, paper: str = ""):
    def add(fn):
        if name in BUILDERS:
            raise ValueError(f"data builder {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        BUILDERS[name] = Builder(name, fn, doc[0] if doc else "", paper)
        return fn

    return add
