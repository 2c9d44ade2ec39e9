"""The bare-PyTorch floor of the DPO steps vs_trl.py measures: the least code that does the same work.

    python benchmarks/dpo_floor.py --model DIR --train FILE --steps 30 --batch-size 8 --layout padded --out R.json

Same model, pairs in file order (the order both trainers see), the same tokenization (prompt and
prompt + response tokenized apart, the shared leading tokens are the prompt, EOS appended, prompt
+ response cut to max_length from the end), frozen reference copy, sigmoid DPO, AdamW (betas
0.9/0.999, eps 1e-8, no weight decay), linear decay without warm-up, grad clip 1.0, fp32. No
trainer, no metrics beyond the loss. The output head runs only at positions whose next token is
scored.

--layout padded: chosen and rejected of a step in one right-padded batch [2B, L].
--layout packed: the step's 2B sequences packed first-fit-decreasing into rows of at most
max_length tokens, position ids restarting per sequence and no attention mask, so transformers
confines attention to each sequence; the packed log-probs are checked against the padded ones
on the first batch (max_abs_diff_logp in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def tokenize_pair(tokenizer, row: dict, max_length: int) -> list[tuple[list[int], int]]:
    """[(ids, first response index)] for chosen and rejected."""
    prompt = tokenizer(row["prompt"])["input_ids"]
    out = []
    for key in ("chosen", "rejected"):
        full = tokenizer(row["prompt"] + row[key])["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        if tokenizer.eos_token_id not in full[-2:]:
            full = full + [tokenizer.eos_token_id]
        out.append((full[:max_length], start))
    return out


def padded_rows(torch, seqs: list[tuple[list[int], int]], pad_id: int) -> dict:
    width = max(len(ids) for ids, _ in seqs)
    n = len(seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    scored = torch.zeros((n, width), dtype=torch.bool)  # position p predicts token p + 1, a response token
    for i, (s, start) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        scored[i, max(start - 1, 0): len(s) - 1] = True
    owner = torch.arange(n)[:, None].expand(n, width)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": None, "scored": scored, "owner": owner,
            "n": n, "tokens": int(mask.sum()), "padded_tokens": ids.numel()}


def packed_rows(torch, seqs: list[tuple[list[int], int]], pad_id: int, capacity: int) -> dict:
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    rows, fill = [], []
    for i in order:  # first fit, longest first
        r = next((r for r in range(len(rows)) if fill[r] + len(seqs[i][0]) <= capacity), None)
        if r is None:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        fill[r] += len(seqs[i][0])
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros_like(ids)
    scored = torch.zeros(ids.shape, dtype=torch.bool)
    owner = torch.zeros_like(ids)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            s, start = seqs[i]
            ids[r, at: at + len(s)] = torch.tensor(s)
            pos[r, at: at + len(s)] = torch.arange(len(s))
            scored[r, at + max(start - 1, 0): at + len(s) - 1] = True
            owner[r, at: at + len(s)] = i
            at += len(s)
        pos[r, at:] = torch.arange(width - at)  # the tail is a sequence of its own, never scored
    return {"input_ids": ids, "attention_mask": None, "position_ids": pos, "scored": scored, "owner": owner,
            "n": len(seqs), "tokens": sum(len(s) for s, _ in seqs), "padded_tokens": ids.numel()}


def sequence_logps(torch, model, rows: dict):
    """[n] summed log-probs of the response tokens of each sequence."""
    kwargs = {"input_ids": rows["input_ids"], "use_cache": False}
    for key in ("attention_mask", "position_ids"):
        if rows[key] is not None:
            kwargs[key] = rows[key]
    hidden = model.model(**kwargs).last_hidden_state
    scored = rows["scored"]
    targets = torch.roll(rows["input_ids"], -1, dims=1)[scored]
    logits = model.lm_head(hidden[scored]).float()
    logps = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
    return torch.zeros(rows["n"], dtype=logps.dtype).index_add(0, rows["owner"][scored], logps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--layout", choices=["padded", "packed"], default="padded")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    torch.set_num_threads(args.threads)
    with open(args.train, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()][: args.steps * args.batch_size]
    if len(pairs) < args.steps * args.batch_size:
        sys.exit(f"{args.train}: too few pairs for {args.steps} steps")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    b = args.batch_size
    steps = []
    for k in range(args.steps):
        tok = [tokenize_pair(tokenizer, row, args.max_length) for row in pairs[k * b: (k + 1) * b]]
        seqs = [t[0] for t in tok] + [t[1] for t in tok]  # chosen rows first, then rejected
        steps.append(packed_rows(torch, seqs, pad_id, args.max_length) if args.layout == "packed"
                     else padded_rows(torch, seqs, pad_id))

    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).train()
    reference = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval().requires_grad_(False)
    check = {}
    if args.layout == "packed":
        first = [t for row in pairs[:b] for t in tokenize_pair(tokenizer, row, args.max_length)]
        first = first[0::2] + first[1::2]
        with torch.no_grad():
            diff = sequence_logps(torch, reference, padded_rows(torch, first, pad_id)) - \
                sequence_logps(torch, reference, steps[0])
        check["max_abs_diff_logp"] = float(diff.abs().max())
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, args.steps)
    losses, step_s = [], []
    t0 = time.perf_counter()
    for rows in steps:
        t_step = time.perf_counter()
        logps = sequence_logps(torch, policy, rows)
        with torch.no_grad():
            ref = sequence_logps(torch, reference, rows)
        margin = (logps[:b] - ref[:b]) - (logps[b:] - ref[b:])
        loss = -F.logsigmoid(args.beta * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step_s.append(time.perf_counter() - t_step)
    result = {"trainer": f"floor_{args.layout}", "loop_s": time.perf_counter() - t0, "step_s": step_s,
              "steps": args.steps, "tokens": sum(r["tokens"] for r in steps),
              "padded_tokens": sum(r["padded_tokens"] for r in steps), "losses": losses, **check}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
