#!/usr/bin/env python
"""Build the tiny *base* causal LM and tokenizer shipped in ``src/prefalign/assets/tiny-base``.

The result is a toy Llama-architecture model (~1.8 M parameters) pretrained for a few minutes on a
CPU.  It exists so that the offline quickstart, examples and tests have a real (if weak) base model
that speaks HH-RLHF-style English; it is not useful for anything else.

Data (all read offline from ``--shared-data``, see ``shared/data/SOURCES.md``):

* HH-RLHF helpful test splits (``helpful-base``, ``helpful-online``, ``helpful-rejection-sampled``),
  both the ``chosen`` and the ``rejected`` transcript of every row (identical pairs counted once);
* the first 2 MiB of TinyStories-V2 (GPT-4) valid.

``hh_rlhf_harmless_base_test.jsonl.gz`` is deliberately *not* read: it is the quickstart's alignment
and held-out evaluation data and must stay unseen by the base model (and by its tokenizer).

Usage (from the repository root)::

    python scripts/build_tiny_base.py --minutes 12
    python scripts/build_tiny_base.py --steps 200 --out /tmp/tiny-base   # quick smoke build
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "prefalign" / "assets" / "tiny-base"
DEFAULT_SHARED = REPO_ROOT / ".." / "shared" / "data"

EOS_TOKEN = "<|endoftext|>"  # end of document; also used as padding
BOS_TOKEN = "<|bos|>"  # prepended once to every encoded string
VOCAB_SIZE = 4096

HH_FILES = (
    "hh_rlhf_helpful_base_test.jsonl.gz",
    "hh_rlhf_helpful_online_test.jsonl.gz",
    "hh_rlhf_helpful_rejection_sampled_test.jsonl.gz",
)
STORIES_FILE = "tinystories_v2_valid_head.txt.gz"
FORBIDDEN_FILES = ("hh_rlhf_harmless_base_test.jsonl.gz",)  # alignment / evaluation data: never read here

# HH-RLHF style chat template.  Literal newlines are written into the Jinja string literals (rather
# than "\n" escapes) so the rendered text does not depend on the Jinja escape handling.  The output is
# tokenized without special tokens by ``apply_chat_template``, hence the leading ``bos_token``.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '\n\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\n\nAssistant: ' + message['content'] + eos_token }}"
    "{% else %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)

SAMPLE_PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"


# --------------------------------------------------------------------------------------------- data
def load_documents(shared: Path) -> tuple[list[str], dict[str, int]]:
    """Return the pretraining documents and a per-source document count."""
    docs: list[str] = []
    counts: dict[str, int] = {}
    for name in HH_FILES:
        assert name not in FORBIDDEN_FILES
        path = shared / name
        n = 0
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                row = json.loads(line)
                chosen, rejected = row["chosen"], row["rejected"]
                for text in (chosen, rejected) if chosen != rejected else (chosen,):
                    if text.strip():
                        docs.append(text)
                        n += 1
        counts[name] = n
    with gzip.open(shared / STORIES_FILE, "rt", encoding="utf-8") as fh:
        raw = fh.read()
    stories = [s.strip() for s in raw.split(EOS_TOKEN)]
    stories = [s for s in stories if s]
    docs.extend(stories)
    counts[STORIES_FILE] = len(stories)
    return docs, counts


# ---------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(docs: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, BOS_TOKEN],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    eos_id, bos_id = tok.token_to_id(EOS_TOKEN), tok.token_to_id(BOS_TOKEN)
    # BOS once in front, never EOS.  The pair form matches what transformers itself generates for
    # add_bos_token=True / add_eos_token=False, so the behaviour is the same however it is loaded.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tok, bos_id, eos_id


def wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=512,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def make_tokenizer_config_portable(out: Path) -> None:
    """Let transformers 4.x (the package supports >= 4.46) load the tokenizer too.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` (unknown to 4.x) and puts the chat
    template only in ``chat_template.jinja`` (older 4.x releases read it from the config).  Name the
    generic fast class instead (an alias of ``TokenizersBackend`` in 5.x), inline the template, and
    record the BOS/EOS behaviour explicitly; the BOS-once template in ``tokenizer.json`` is unchanged.
    """
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = True
    cfg["add_eos_token"] = False
    cfg["model_input_names"] = ["input_ids", "attention_mask"]  # 4.x would add token_type_ids otherwise
    cfg.setdefault("chat_template", CHAT_TEMPLATE)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def pack_sequences(tok, docs: list[str], bos_id: int, eos_id: int, seq_len: int) -> torch.Tensor:
    """Concatenate ``<|bos|> doc <|endoftext|>`` for every document and cut into ``seq_len`` blocks."""
    stream: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        stream.append(bos_id)
        stream.extend(enc.ids)
        stream.append(eos_id)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


# ------------------------------------------------------------------------------------------- model
def build_model(bos_id: int, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        initializer_range=0.02,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, warmup: int, progress: float, peak: float, min_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio * peak`` as the
    post-warm-up ``progress`` goes from 0 to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, max(0.0, progress))
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_loss(model, seqs: torch.Tensor, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i : i + batch_size]
        out = model(input_ids=batch, labels=batch)
        total += out.loss.item() * len(batch)  # every sequence has seq_len - 1 targets
        count += len(batch)
    model.train(was_training)
    return total / max(1, count)


# -------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED,
                    help="folder holding the shared data files (default: ../shared/data from the repo root)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--minutes", type=float, default=12.0,
                    help="wall-clock budget of the training loop in minutes (ignored when --steps is given)")
    ap.add_argument("--steps", type=int, default=None, help="train for exactly this many optimizer steps")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--heldout-frac", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args(argv)

    cli_args = sys.argv[1:] if argv is None else argv
    command = "python " + shlex.join(["scripts/build_tiny_base.py", *cli_args])
    t_start = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    shared = args.shared_data.resolve()
    if not shared.is_dir():
        sys.exit(f"shared data folder not found: {shared}")

    out = args.out.resolve()
    if out.exists():
        leftovers = [p.name for p in out.iterdir()]
        if leftovers and not (out / "config.json").exists():
            sys.exit(f"refusing to overwrite {out}: it exists and does not look like a previous build")
        shutil.rmtree(out)

    # ---- data + tokenizer
    docs, counts = load_documents(shared)
    print(f"documents: {len(docs)} " + ", ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    t0 = time.time()
    tok, bos_id, eos_id = train_tokenizer(docs)
    print(f"tokenizer: vocab {tok.get_vocab_size()} (bos={bos_id}, eos/pad={eos_id}) "
          f"trained in {time.time() - t0:.1f}s", flush=True)
    hf_tok = wrap_tokenizer(tok)

    seqs = pack_sequences(tok, docs, bos_id, eos_id, args.seq_len)
    gen = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(seqs), generator=gen)
    n_held = max(1, int(round(args.heldout_frac * len(seqs))))
    held = seqs[perm[:n_held]]
    train = seqs[perm[n_held:]]
    print(f"sequences: {len(seqs)} x {args.seq_len} tokens ({seqs.numel():,} tokens); "
          f"train {len(train)}, held-out {len(held)}", flush=True)

    # ---- model + optimizer
    model = build_model(bos_id, eos_id)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: LlamaForCausalLM, {n_params:,} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    # With --steps the cosine runs over steps.  With --minutes it runs over wall-clock time (the CPU may
    # be shared, so step time is not stable): it reaches its floor exactly when the budget is spent.
    budget_s = None if args.steps is not None else args.minutes * 60.0
    total_steps = args.steps if args.steps is not None else 10**12
    warmup = args.warmup if args.steps is None else min(args.warmup, max(1, args.steps // 10))
    t_warm_end = None  # wall-clock time at the end of warm-up (time-budget mode)

    model.train()
    order = torch.randperm(len(train), generator=gen)
    cursor = 0
    recent: list[float] = []
    train_losses: list[float] = []
    t_train = time.time()
    step = 0
    while step < total_steps:
        if cursor + args.batch_size > len(order):
            order = torch.randperm(len(train), generator=gen)
            cursor = 0
        batch = train[order[cursor : cursor + args.batch_size]]
        cursor += args.batch_size

        if budget_s is None:
            progress = (step - warmup) / max(1, total_steps - warmup)
        else:
            now = time.time() - t_train
            if step == warmup:
                t_warm_end = now
            progress = 0.0 if t_warm_end is None else (now - t_warm_end) / max(1e-6, budget_s - t_warm_end)
        lr = lr_at(step, warmup, progress, args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        recent.append(loss.item())
        train_losses.append(recent[-1])

        elapsed = time.time() - t_train
        if budget_s is not None and elapsed >= budget_s:
            print(f"  [budget] wall-clock budget reached at step {step}", flush=True)
            break
        if step % args.log_every == 0:
            tok_s = step * args.batch_size * args.seq_len / elapsed
            print(f"step {step:5d}  loss {sum(recent) / len(recent):.4f}  lr {lr:.2e}  "
                  f"{elapsed:6.0f}s  {tok_s:,.0f} tok/s", flush=True)
            recent = []

    train_time = time.time() - t_train
    tail = train_losses[-args.log_every:]
    final_train_running = sum(tail) / len(tail)
    gen_eval = torch.Generator().manual_seed(args.seed + 1)
    train_probe = train[torch.randperm(len(train), generator=gen_eval)[: len(held)]]
    final_train_eval = mean_loss(model, train_probe, 32)
    held_loss = mean_loss(model, held, 32)
    print(f"done: {step} steps in {train_time:.0f}s", flush=True)
    print(f"final train loss (mean of last {len(tail)} steps): {final_train_running:.4f}")
    print(f"final train loss (eval mode, {len(train_probe)} train sequences): {final_train_eval:.4f} "
          f"(ppl {math.exp(final_train_eval):.2f})")
    print(f"held-out loss ({len(held)} sequences): {held_loss:.4f}  perplexity {math.exp(held_loss):.2f}",
          flush=True)

    # ---- sample
    model.eval()
    enc = hf_tok(SAMPLE_PROMPT, return_tensors="pt")
    with torch.no_grad():
        out_ids = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=eos_id)
    sample = hf_tok.decode(out_ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"greedy sample: {SAMPLE_PROMPT!r} -> {sample!r}", flush=True)

    # ---- save
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    make_tokenizer_config_portable(out)
    for path in out.iterdir():  # the weights are written via a private temp file (mode 0600)
        path.chmod(0o644)
    total_wall = time.time() - t_start
    readme = f"""# tiny-base: a toy base model for prefalign's offline quickstart

A {n_params / 1e6:.2f} M-parameter `LlamaForCausalLM` (hidden 128, intermediate 352, 4 layers,
4 attention heads / 2 key-value heads, context 512, untied embeddings, float32 safetensors) with a
{VOCAB_SIZE}-token byte-level BPE tokenizer, both trained from scratch on a CPU in a few minutes by
`scripts/build_tiny_base.py`.

**This is a toy *base* model for offline demos and tests.** It writes HH-RLHF / TinyStories-flavoured
English-looking text, is neither instruction-tuned nor aligned, knows nothing reliable, and must not
be used for anything but exercising code paths (e.g. the quickstart's SFT / preference-alignment runs).

## Tokenizer

- Byte-level BPE (`tokenizers`), vocabulary {VOCAB_SIZE}, trained on the same text as the model.
- `{BOS_TOKEN}` (id {bos_id}) is the BOS token: encoding a string with `add_special_tokens=True`
  prepends it exactly once; EOS is never appended.
- `{EOS_TOKEN}` (id {eos_id}) is the EOS token and also the padding token.
- Chat template (HH-RLHF style): `{BOS_TOKEN}` then `\\n\\nHuman: {{content}}` for each user turn and
  `\\n\\nAssistant: {{content}}{EOS_TOKEN}` for each assistant turn; `add_generation_prompt=True`
  appends `\\n\\nAssistant:`. System messages, if any, are rendered as bare text.

## Training data

Pretraining text (and tokenizer training text), read offline from `shared/data/`:

| file | documents | source | license |
|---|---|---|---|
| `hh_rlhf_helpful_base_test.jsonl.gz` | {counts[HH_FILES[0]]} | Anthropic HH-RLHF, helpful-base test split (chosen + rejected transcripts) | MIT |
| `hh_rlhf_helpful_online_test.jsonl.gz` | {counts[HH_FILES[1]]} | Anthropic HH-RLHF, helpful-online test split (chosen + rejected) | MIT |
| `hh_rlhf_helpful_rejection_sampled_test.jsonl.gz` | {counts[HH_FILES[2]]} | Anthropic HH-RLHF, helpful-rejection-sampled test split (chosen + rejected) | MIT |
| `tinystories_v2_valid_head.txt.gz` | {counts[STORIES_FILE]} | first 2 MiB of TinyStories-V2 (GPT-4) valid, Eldan & Li 2023 | CDLA-Sharing-1.0 |

Rows whose chosen and rejected transcripts are identical contribute one document. The HH-RLHF
**harmless-base** test split (`hh_rlhf_harmless_base_test.jsonl.gz`) was *not* used: it is the
quickstart's alignment and held-out evaluation data and is unseen by this model and its tokenizer.
See `shared/data/SOURCES.md` for provenance. Each document is encoded as
`{BOS_TOKEN} text {EOS_TOKEN}`; documents are packed into {len(seqs)} sequences of {args.seq_len} tokens
({seqs.numel():,} tokens), of which {len(held)} ({args.heldout_frac:.0%}, random) were held out.
Held-out sequences are disjoint as token blocks, but chosen/rejected transcripts of one HH-RLHF row
share their conversation prefix, so held-out text is not fully unseen: the held-out loss is optimistic.

## How it was built

```
{command}
```

(run from the repository root; torch {torch.__version__}, {args.threads} CPU threads, seed {args.seed}).
Causal-LM loss, AdamW (peak lr {args.lr:g}, betas 0.9/0.95, weight decay {args.weight_decay:g} on matrices,
linear warm-up over {warmup} steps then cosine decay to 10% of peak, gradient clipping 1.0),
batch {args.batch_size} x {args.seq_len} tokens. With `--minutes` the cosine decay follows the wall clock and
training stops when the budget is spent, so the step count (and the model) depends on the machine and
its load; `--steps N` gives a step-deterministic schedule instead.

| | |
|---|---|
| optimizer steps | {step} |
| tokens seen | {step * args.batch_size * args.seq_len:,} |
| training time | {train_time / 60:.1f} min (whole script {total_wall / 60:.1f} min) |
| final train loss (mean of last {len(tail)} steps) | {final_train_running:.4f} |
| final train loss (eval mode, {len(train_probe)} train sequences) | {final_train_eval:.4f} (ppl {math.exp(final_train_eval):.2f}) |
| held-out loss ({len(held)} sequences) | {held_loss:.4f} (ppl {math.exp(held_loss):.2f}) |

Greedy sample (40 new tokens) for the prompt `{SAMPLE_PROMPT!r}`:

```
{sample}
```

## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
path = "src/prefalign/assets/tiny-base"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
```

License of this folder: the weights and tokenizer are derived from the data above (MIT and
CDLA-Sharing-1.0); the build script is part of prefalign (Apache-2.0).
"""
    (out / "README.md").write_text(readme, encoding="utf-8")
    print(f"saved to {out} ({total_wall / 60:.1f} min total)")
    for p in sorted(out.iterdir()):
        print(f"  {p.name:28s} {p.stat().st_size:>10,d} B")


if __name__ == "__main__":
    main()
