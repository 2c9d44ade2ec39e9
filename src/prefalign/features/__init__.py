"""Feature suppliers: one module per extra input an objective may declare (see registry.py).

Importing this package registers every supplier. `tokenize` and `collate` are the data layer's
functions with the suppliers of an objective's features plugged in.
"""

from __future__ import annotations

from prefalign.data.collate import Batch, collate as collate_rows
from prefalign.data.tokenize import TokenizedExample, TokenizeStats, tokenize_examples
from prefalign.features import (  # noqa: F401  (registration side effect; this order is the extra rows' order)
    structure,
    row_fields,
    token_logps,
    sparsepo,
    activation_mask,
    ref_sample,
    contrast,
    longpo,
    mismatched,
    sequence_nll,
)
from prefalign.features.registry import SUPPLIERS, FeatureSupplier, Step, for_features, get_supplier, supplier, unsupplied

__all__ = ["SUPPLIERS", "FeatureSupplier", "Step", "collate", "for_features", "get_supplier", "supplier", "tokenize",
           "unsupplied"]


def tokenize(examples: list, tokenizer, max_length: int, max_prompt_length: int, stats: TokenizeStats | None = None,
             features=(), **options) -> list[TokenizedExample]:
    """data.tokenize.tokenize_examples plus the extra rows the suppliers of `features` build.
    options: supplier options (e.g. contrast=(better, worse) templates for contrast_token_rewards)."""
    unknown = sorted(set(options) - {o for s in SUPPLIERS.values() for o in s.options})
    if unknown:
        raise TypeError(f"no feature supplier reads the option(s) {unknown}")
    suppliers = for_features(features)
    options = {k: v for k, v in options.items() if any(k in s.options for s in suppliers)}
    for s in suppliers:
        clash = [s2.name for s2 in suppliers if s2.name in s.excludes]
        if clash:
            raise ValueError(f"{s.name} rows and {', '.join(clash)} rows cannot be combined: the reference scores "
                             f"the {s.name} rows only")
    return tokenize_examples(examples, tokenizer, max_length, max_prompt_length, stats, tuple(suppliers), **options)


def carried(examples: list) -> set[str]:
    """Names of the features whose extra rows the examples carry."""
    return set(examples[0].policy_rows) | set(examples[0].side_rows) if examples else set()


def collate(examples: list, pad_id: int, features=(), pad_multiple: int = 1, pack=None) -> Batch:
    """data.collate.collate plus the tensors the suppliers of `features` (and of the rows the
    examples carry) add at collate time. `pack` (packing.PackOptions): pack every row batch."""
    batch = collate_rows(examples, pad_id, pad_multiple, pack)
    for s in for_features(set(features) | carried(examples)):
        s.collate(examples, batch, pad_id, pad_multiple, pack=pack)
    return batch
