"""Factor-level preference analysis: which measurable properties explain a set of preferences?

Li et al., "Dissecting Human and LLM Preferences", arXiv:2402.11296. The paper annotates each
response with properties, turns a pair (a, b) into comparison features phi_i(a, b) (a's property
against b's), and fits P(a preferred) = sigmoid(sum_i alpha_i phi_i) by Bayesian logistic
regression; the weights alpha say how much each property drives the preference.

Departures from the paper, and why:
- Properties are measured by code, not annotated by GPT-4: log word count, Markdown structure
  (list items, headers, bold, code fences), hedging phrases, refusal phrases, and how much of the
  prompt's vocabulary the response reuses, plus any user-supplied `factor(prompt, response) ->
  float` (register_factor, or "module:function"). The paper's 29 properties (correctness,
  harmlessness, ...) need an annotator; these need nothing.
- phi_i(a, b) = f_i(a) - f_i(b), antisymmetric, so the model has no intercept and the fit does
  not depend on which response is listed first. Features are divided by their root mean square
  (not centred: centring would break the antisymmetry), so weights compare across factors: a
  weight is the change in log-odds per typical difference of that factor.
- Maximum a posteriori with a weak Gaussian prior (l2, default 1e-3 on the standardised scale)
  instead of MCMC: the prior only keeps separable data finite. The posterior is approximated
  by a Gaussian at the mode (Laplace), i.e. the usual Wald intervals w +- z * sqrt(diag H^-1).
Fit by Newton's method / IRLS in float64, written here (no sklearn).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

FACTORS: dict[str, Callable] = {}
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def register_factor(name: str):
    """Decorator: a per-response factor f(prompt, response) -> float, compared as f(a) - f(b)."""

    def add(fn):
        if name in FACTORS:
            raise ValueError(f"factor {name!r} is registered twice")
        FACTORS[name] = fn
        return fn

    return add


def as_text(value) -> str:
    """A prompt or response as plain text (chat message lists are joined)."""
    return value if isinstance(value, str) else "\n".join(m.get("content", "") for m in value)


WORD = re.compile(r"[A-Za-z0-9']+")
MARKDOWN = re.compile(r"^\s*(?:[-*+]\s|\d+[.)]\s|#{1,6}\s|```)|\*\*[^*]+\*\*", re.M)
HEDGES = ("i think", "i believe", "it seems", "perhaps", "maybe", "might", "possibly", "probably", "it depends",
          "not sure", "i'm not certain", "generally", "in some cases", "could be", "may be")
REFUSALS = ("i can't", "i cannot", "i can not", "i won't", "i will not", "i'm sorry", "i am sorry", "i apologize",
            "as an ai", "i'm not able to", "i am not able to", "i'm unable to", "i am unable to",
            "i don't feel comfortable", "i'm not comfortable")
STOP = {"the", "a", "an", "and", "or", "of", "to", "in", "is", "it", "i", "you", "that", "for", "on", "with",
        "be", "are", "this", "what", "how", "do", "can", "my", "me", "human", "assistant"}


@register_factor("length")
def log_words(prompt, response) -> float:
    # log, not raw counts: one 2,000-word response would otherwise set the scale for all pairs
    return math.log1p(len(WORD.findall(as_text(response))))


@register_factor("markdown")
def markdown_elements(prompt, response) -> float:
    return float(len(MARKDOWN.findall(as_text(response))))


def phrase_count(text: str, phrases) -> int:
    low = as_text(text).lower().replace("\u2019", "'")
    return sum(low.count(p) for p in phrases)


@register_factor("hedging")
def hedging_phrases(prompt, response) -> float:
    return float(phrase_count(response, HEDGES))


@register_factor("refusal")
def refuses(prompt, response) -> float:
    # present or absent, as the paper's binary properties: two apologies are not twice the refusal
    return float(phrase_count(response, REFUSALS) > 0)


@register_factor("prompt_overlap")
def prompt_overlap(prompt, response) -> float:
    """Share of the prompt's content words (no stop words) that the response repeats."""
    asked = {w for w in WORD.findall(as_text(prompt).lower()) if w not in STOP}
    said = set(WORD.findall(as_text(response).lower()))
    return len(asked & said) / len(asked) if asked else 0.0


DEFAULT_FACTORS = ("length", "markdown", "hedging", "refusal", "prompt_overlap")


def resolve_factor(spec: str) -> tuple[str, Callable]:
    """A registered factor name, or "module:function" importing a user factor."""
    if spec in FACTORS:
        return spec, FACTORS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown factor {spec!r}; registered: {', '.join(sorted(FACTORS))}; "
                         "or give module:function")
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"factor {spec!r}: {module} has no function {name!r}")
    return name, fn


def factor_matrix(prompts: list, a: list, b: list, factors=DEFAULT_FACTORS) -> tuple[list[str], torch.Tensor]:
    """[N, F] comparison features phi_f = f(prompt, a) - f(prompt, b), float64."""
    names, fns = zip(*(resolve_factor(f) if isinstance(f, str) else (f.__name__, f) for f in factors))
    rows = []
    for i, (p, x, y) in enumerate(zip(prompts, a, b)):
        row = []
        for name, fn in zip(names, fns):
            fx, fy = fn(p, x), fn(p, y)
            if not (isinstance(fx, (int, float)) and isinstance(fy, (int, float)) and math.isfinite(fx)
                    and math.isfinite(fy)):
                raise ValueError(f"factor {name!r} gave a non-finite or non-number value on pair {i}: {fx!r}, {fy!r}")
            row.append(float(fx) - float(fy))
        rows.append(row)
    return list(names), torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(names))


@dataclass
class LogisticFit:
    weights: torch.Tensor  # [F]
    stderr: torch.Tensor  # [F]
    iterations: int
    converged: bool


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 0.0, max_iter: int = 100,
                 tol: float = 1e-10) -> LogisticFit:
    """Newton / IRLS for sum_n y log s(x w) + (1 - y) log s(-x w) - l2/2 |w|^2, no intercept.

    Step: w <- w + H^-1 g with g = X^T (y - s) - l2 w and H = X^T diag(s (1 - s)) X + l2 I. The
    standard errors are sqrt(diag H^-1) at the optimum (Wald / Laplace).
    """
    x, y = x.double(), y.double()
    n, f = x.shape
    w = torch.zeros(f, dtype=torch.float64)
    eye = torch.eye(f, dtype=torch.float64)
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        s = torch.sigmoid(x @ w)
        grad = x.T @ (y - s) - l2 * w
        hess = x.T @ (x * (s * (1 - s))[:, None]) + l2 * eye
        step = torch.linalg.solve(hess, grad)
        w = w + step
        if step.abs().max() < tol:
            converged = True
            break
    s = torch.sigmoid(x @ w)
    hess = x.T @ (x * (s * (1 - s))[:, None]) + l2 * eye
    return LogisticFit(w, torch.linalg.inv(hess).diagonal().clamp(min=0).sqrt(), it, converged)


def explain_preferences(names: list[str], phi: torch.Tensor, prefers_a, l2: float = 1e-3) -> dict:
    """Logistic-regression weights with 95% intervals of one source's preferences.

    prefers_a: [N] per pair 1 (a preferred), 0 (b preferred), 0.5 or None (tie / no verdict:
    excluded and counted). Factors that never differ within the kept pairs cannot be estimated
    and are listed under `constant` rather than given a weight.
    """
    keep = [i for i, v in enumerate(prefers_a) if v is not None and v != 0.5]
    excluded = len(prefers_a) - len(keep)
    if not keep:
        raise ValueError("no decided pairs to explain (every preference is a tie or missing)")
    y = torch.tensor([float(prefers_a[i]) for i in keep], dtype=torch.float64)
    if ((y != 0) & (y != 1)).any():
        raise ValueError("preferences must be 1 (a), 0 (b), 0.5 (tie) or None")
    x = phi[keep]
    scale = x.pow(2).mean(0).sqrt()
    varying = [j for j in range(len(names)) if scale[j] > 0]
    fit = fit_logistic(x[:, varying] / scale[varying], y, l2)
    rows = []
    for k, j in enumerate(varying):
        w, se = float(fit.weights[k]), float(fit.stderr[k])
        rows.append({"factor": names[j], "weight": w, "ci_low": w - Z95 * se, "ci_high": w + Z95 * se,
                     "stderr": se, "scale": float(scale[j]),
                     "significant": bool(w - Z95 * se > 0 or w + Z95 * se < 0)})
    return {"pairs": len(keep), "excluded": excluded, "share_a": float(y.mean()), "factors": rows,
            "constant": [names[j] for j in range(len(names)) if j not in varying],
            "converged": fit.converged, "iterations": fit.iterations, "l2": l2}


def length_bias_sentence(source: str, result: dict) -> str:
    """One plain sentence on the length weight, the bias the analysis papers warn about most."""
    row = next((r for r in result["factors"] if r["factor"] == "length"), None)
    if row is None:
        return f"{source}: length never differs within the pairs, so no length bias can be measured."
    span = f"weight {row['weight']:+.2f}, 95% CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    if not row["significant"]:
        return f"{source}: no clear length bias ({span}; the interval includes 0)."
    side = "longer" if row["weight"] > 0 else "shorter"
    if abs(row["weight"]) > 5:
        # odds ratios beyond e^5 = 148 say only that length (nearly) decides every pair
        return (f"**{source} prefers {side} responses** ({span}): its choices are almost fully predicted by "
                f"length alone.")
    return (f"**{source} prefers {side} responses** ({span}): a typical length difference multiplies the odds "
            f"of preferring the {side} response by {math.exp(abs(row['weight'])):.2f}, other factors held fixed.")


def plot_factor_weights(results: dict[str, dict], out_png) -> None:
    """One row per factor, one marker with its 95% interval per preference source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["factor"] for res in results.values() for r in res["factors"]))
    # a factor that almost never varies has a huge interval; cut intervals at the axis edge (marked
    # with a triangle) so that it does not squash every other estimate into a line at 0
    lim = max([2.0] + [1.25 * abs(r["weight"]) for res in results.values() for r in res["factors"]])
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(names) + 2.2))
    width = 0.7 / max(len(results), 1)
    for k, (source, res) in enumerate(results.items()):
        by = {r["factor"]: r for r in res["factors"]}
        ys = [i + (k - (len(results) - 1) / 2) * width for i, n in enumerate(names) if n in by]
        rs = [by[n] for n in names if n in by]
        lo, hi = [max(r["ci_low"], -lim) for r in rs], [min(r["ci_high"], lim) for r in rs]
        bars = ax.errorbar([r["weight"] for r in rs], ys, xerr=[[r["weight"] - v for r, v in zip(rs, lo)],
                                                                [v - r["weight"] for r, v in zip(rs, hi)]],
                           fmt="o", capsize=3, label=f"{source} (n={res['pairs']})")
        color = bars[0].get_color()
        for y, r in zip(ys, rs):
            if r["ci_low"] < -lim:
                ax.plot(-lim, y, "<", color=color)
            if r["ci_high"] > lim:
                ax.plot(lim, y, ">", color=color)
    ax.set_xlim(-lim * 1.04, lim * 1.04)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("weight (log-odds per typical difference), 95% CI\n(triangles: interval continues past the edge)")
    ax.set_title("What explains the preferences")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")  # keeps the legend below the axes
    plt.close(fig)
