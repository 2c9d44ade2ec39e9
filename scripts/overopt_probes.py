"""Run the three over-optimisation / shift probes on one training run and write JSON + PNG.

    python scripts/overopt_probes.py RUN_DIR --data tests/fixtures/hh_harmless_64.jsonl --out RUN_DIR/probes

1. likelihood over-optimisation indicators (arXiv:2410.11677) for the run's start model, every
   checkpoint-N and final;
2. reward over-optimisation (arXiv:2210.10760): judge score gain against sqrt(sampled KL), the
   fit and its peak. The judge is MiniLM relevance (cosine of prompt and response embeddings,
   a stand-in for a gold reward model) or response length in words;
3. token distribution shift (URIAL, arXiv:2312.01552) of the final model against the start model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from prefalign.data.readers import load_examples
from prefalign.diagnostics.overoptimization import indicators_over_checkpoints, plot_likelihood_indicators, run_models
from prefalign.diagnostics.reward_overopt import plot_reward_vs_kl, reward_vs_kl
from prefalign.diagnostics.token_shift import plot_token_shift, token_shift
from prefalign.judges import CallableJudge
from prefalign.models import load_model, load_tokenizer


def make_judge(name: str) -> CallableJudge:
    if name == "length":
        return CallableJudge(lambda p, r: float(len(r.split())))
    from prefalign.encoders import SentenceEncoder

    encoder = SentenceEncoder()
    text = lambda p: p if isinstance(p, str) else p[-1]["content"]  # noqa: E731  the last user turn
    return CallableJudge(lambda p, r: float(encoder.encode([text(p)])[0] @ encoder.encode([r or " "])[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", required=True, help="prompts: any prefalign data file (its held-out prompts)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--judge", default="minilm", choices=("minilm", "length"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or args.run / "probes"
    out.mkdir(parents=True, exist_ok=True)
    examples, _ = load_examples(args.data)
    prompts = [e.prompt for e in examples[-args.prompts:]]  # the file's end: seeded splits rarely train on all of it
    models = run_models(args.run)
    start, final = models[0][1], models[-1][1]
    print("models:", [(s, str(p)) for s, p in models])

    lik = indicators_over_checkpoints(models, prompts, max_new_tokens=args.max_new_tokens)
    plot_likelihood_indicators(lik, out / "likelihood_overopt.png")
    rew = reward_vs_kl(models, start, make_judge(args.judge), prompts, max_new_tokens=args.max_new_tokens)
    plot_reward_vs_kl(rew, out / "reward_overopt.png")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shift = token_shift(load_model(str(final)).to(device), load_model(str(start)).to(device),
                        load_tokenizer(str(final)), prompts, max_new_tokens=args.max_new_tokens)
    plot_token_shift(shift, out / "token_shift.png")
    report = {"likelihood_overopt": lik, "reward_overopt": rew, "token_shift": shift}
    (out / "probes.json").write_text(json.dumps(report, indent=1, default=str))
    for r in lik["rows"]:
        print(f"step {r['step']:>4}  top-{lik['k']} entropy {r['topk_entropy']:.4f}  mass {r['topk_mass']:.4f}")
    for r in rew["rows"]:
        print(f"step {r['step']:>4}  KL {r['kl']:8.3f}  d {r['d']:.3f}  score {r['score']:.4f}  gain {r['gain']:+.4f}")
    print("fit:", rew["fit"], "peak:", rew["peak"], "note:", rew["note"])
    print("shift shares:", {k: round(shift[k + "_share"], 4) for k in ("unshifted", "marginal", "shifted")},
          "most shifted:", [(m["token"], m["shifted"]) for m in shift["most_shifted"][:10]])
    print("written to", out)


if __name__ == "__main__":
    main()
