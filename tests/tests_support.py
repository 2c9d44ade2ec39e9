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


def scripted_llama(model_dir: Path, tokenizer, folder: Path, reply: list[int]) -> Path:
    """A copy of the tiny Llama that answers every prompt with the token ids `reply`, then EOS, at
    any temperature: for tests whose outcome must not depend on what a random model samples.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding:
    one-hot e_i for reply[i - 1], e_0 for every other token; after the final RMSNorm that is
    sqrt(hidden) e_i. The head maps e_0 to reply[0], e_i to reply[i] and the last to EOS with a
    logit of 100 sqrt(hidden) (every other logit 0), so each step is certain. The reply's ids must
    be distinct and must not include the prompt's last token (generation would start mid-reply)."""
    import torch

    from prefalign.models.causal_lm import load_model

    model = load_model(str(model_dir))
    hidden = model.config.hidden_size
    if len(set(reply)) != len(reply) or len(reply) >= hidden or tokenizer.eos_token_id in reply:
        raise ValueError(f"reply needs distinct non-EOS ids, fewer than {hidden}: {reply}")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        emb[:, 0] = 1.0
        head.zero_()
        for i, token in enumerate(reply, start=1):
            emb[token] = 0.0
            emb[token, i] = 1.0
            head[token, i - 1] = 100.0
        head[tokenizer.eos_token_id, len(reply)] = 100.0
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
