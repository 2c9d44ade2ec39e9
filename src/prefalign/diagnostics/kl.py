"""KL(policy || reference) estimated from the policy's own samples.

For y ~ pi(.|x), E[log pi(y|x) - log ref(y|x)] = KL(pi || ref): the mean log-ratio over
sampled responses is an unbiased estimate (the log-ratio on the dataset's fixed responses is
not: those were not drawn from the policy).
"""

from __future__ import annotations

import torch

from prefalign.logps import token_logps


def keep_tail(ids: list[int], limit: int, bos: int | None) -> list[int]:
    if len(ids) <= limit:
        return ids
    if bos is not None and ids[0] == bos:
        return [bos] + ids[len(ids) - limit + 1:]
    return ids[-limit:]


@torch.no_grad()
def sample_kl(policy, reference, tokenizer, prompts: list[str], max_new_tokens: int = 48, seed: int = 0,
              batch_size: int = 8, add_special_tokens: bool = True,
              max_prompt_tokens: int = 256) -> dict[str, float]:
    torch.manual_seed(seed)
    values = []
    pad = tokenizer.pad_token_id
    for s in range(0, len(prompts), batch_size):
        # long prompts keep their end (the turn being answered) and a leading BOS, as training does
        enc = [keep_tail(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"], max_prompt_tokens,
                         tokenizer.bos_token_id) for p in prompts[s:s + batch_size]]
        width = max(len(e) for e in enc)
        # left padding so that every prompt ends where generation starts
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(e) for e in enc])[:, None]).long()
        out = policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=max_new_tokens,
                              pad_token_id=pad, top_k=0, top_p=1.0, temperature=1.0)
        full_mask = torch.cat([mask, torch.ones(out.shape[0], out.shape[1] - width, dtype=torch.long)], 1)
        gen = out[:, width:]
        # tokens after the first EOS are padding from generate, not samples
        eos = tokenizer.eos_token_id
        after_eos = (gen == eos).long().cumsum(1) - (gen == eos).long() > 0
        full_mask[:, width:] *= (~after_eos).long()
        response = torch.zeros_like(out, dtype=torch.bool)
        response[:, width:] = full_mask[:, width:].bool()
        lp = token_logps(policy, out, full_mask, response, "full").sum(1)
        lr = token_logps(reference, out, full_mask, response, "full").sum(1)
        values += (lp - lr).tolist()
    t = torch.tensor(values)
    return {"kl": float(t.mean()), "kl_stderr": float(t.std() / len(values) ** 0.5) if len(values) > 1 else 0.0,
            "samples": len(values)}
