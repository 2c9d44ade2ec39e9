"""Small helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def hh_long_short(n: int | None = None) -> list[dict]:
    """Real HH pairs in LongPO's layout (prompt = long context + instruction, short_prompt = short
    context + the same instruction): the instruction is the last human turn being answered, the
    long context the whole conversation before it, the short context nothing more. Only multi-turn
    conversations qualify (a one-turn prompt has no longer context)."""
    from prefalign.data.records import split_hh_dialogue

    hh = [json.loads(x) for x in (FIXTURES / "hh_harmless_64.jsonl").read_text(encoding="utf-8").splitlines()]
    out = []
    for i, r in enumerate(hh):
        prompt, chosen, rejected = split_hh_dialogue(r["chosen"], r["rejected"], "hh", i)
        short = prompt[prompt.rfind("\n\nHuman:"):]
        if short != prompt:
            out.append({"prompt": prompt, "short_prompt": short, "chosen": chosen, "rejected": rejected})
    return out[:n]


def length_score(prompt, response) -> float:
    """A judge for tests: longer is better (imported by name as 'tests_support:length_score')."""
    return float(len(response))
