"""`pal-plural`: PAL fits a population whose users disagree and adapts to new users from a few comparisons.

Chen et al., "PAL: Pluralistic Alignment Framework for Learning from Heterogeneous Preferences"
(arXiv:2406.08469): a mixture of K shared prototypes with per-user simplex weights beats a single
reward model for seen users and reaches good accuracy on unseen users from few comparisons.
Testbed (from scripts/check_pal_users.py): answers to real-looking questions vary in length
(concise / detailed) and tone (formal / casual); users fall into four equal groups with opposite
tastes, each weighing the two attributes with their own strengths, so one Bradley-Terry reward
sees every order equally often. Responses are encoded by the real all-MiniLM-L6-v2 through
RewardBackbone, frozen; PAL (model B, prompt-dependent prototypes) and a single BT head share the
MLP trunk and train the same way. Held-out comparisons use questions never seen in training.
Unseen users: only their K mixture weights are fitted (`fit_user_weights`) from n comparisons;
each user's accuracy at n is averaged over several independent draws of the n comparisons.

Rules: INCONCLUSIVE when the single BT reward already reaches 0.65 per-user accuracy (then the
population is not contested enough to need pluralism). PASS needs (1) seen users: PAL - BT >= 0.15
in mean per-user held-out accuracy; (2) unseen users: accuracy >= 0.80 with 8 comparisons;
(3) the few-shot curve never drops from one n to the next by more than two standard errors of
the difference. The SE is over users (std of per-user accuracy / sqrt(users)): a user's fitted
weights make all of that user's answers right or wrong together, so comparisons are not
independent and a binomial SE over them would be far too small. Else FAIL.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from prefalign.reproduce.claims import ClaimResult, Verdict, claim

# (question, one-sentence answer, two more sentences of detail)
TOPICS = [
    ("How do I boil an egg?", "Simmer the egg for nine minutes, then cool it in cold water.",
     "Starting from boiling water makes the timing predictable. The cold bath stops the cooking and helps the shell come off."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red light.",
     "This is Rayleigh scattering, which grows strongly at shorter wavelengths. At sunset the light crosses more air, so reds dominate."),
    ("How can I sleep better?", "Keep a fixed bedtime and avoid screens in the last hour.",
     "A regular schedule anchors your body clock. Bright screens delay melatonin, so dim lights help you fall asleep."),
    ("What is compound interest?", "It is interest earned on both the deposit and past interest.",
     "Because each period's interest is added to the balance, growth accelerates over time. Small rates compound into large sums over decades."),
    ("How do I water a cactus?", "Water it deeply, then wait until the soil is completely dry.",
     "Cacti store water and rot if the roots sit wet. In winter most cacti need water only once a month."),
    ("What causes tides?", "The Moon's gravity pulls the oceans into bulges.",
     "Earth rotates through these bulges, giving two high tides a day. The Sun adds to the effect at new and full moon."),
    ("How do I remove a coffee stain?", "Blot it and rinse from the back with cold water.",
     "Hot water can set the stain, so cold is safer. A drop of dish soap worked in gently lifts what remains."),
    ("Why do cats purr?", "Cats purr to communicate contentment and to soothe themselves.",
     "The sound comes from rapid twitching of the laryngeal muscles. Cats also purr when stressed or injured, which may aid healing."),
    ("How should I start running?", "Begin with short run-walk intervals three times a week.",
     "Alternating running and walking lets joints adapt gradually. Add a few minutes of running each week to avoid injury."),
    ("What is a black hole?", "It is a region where gravity is so strong that light cannot escape.",
     "It forms when a massive star collapses at the end of its life. Its boundary is called the event horizon."),
    ("How do vaccines work?", "They train the immune system to recognise a germ before infection.",
     "A harmless piece or weakened form of the germ triggers antibodies. Memory cells then respond quickly to the real pathogen."),
    ("How do I keep bread fresh?", "Store it in a paper bag at room temperature, or freeze slices.",
     "The fridge makes bread go stale faster because starch recrystallises in the cold. Frozen slices toast well straight from the freezer."),
    ("Why do leaves change colour?", "Chlorophyll breaks down in autumn, revealing yellow and orange pigments.",
     "Shorter days signal trees to stop making chlorophyll. Some trees also produce red anthocyanins from trapped sugars."),
    ("How do I learn a new language?", "Practise a little every day and speak with native speakers early.",
     "Daily exposure builds memory better than long weekly sessions. Conversation forces you to recall words actively."),
    ("What does a CPU do?", "It executes the instructions of programs.",
     "It fetches, decodes and runs instructions billions of times per second. Multiple cores let it run several tasks at once."),
    ("How do I make rice fluffy?", "Rinse it, use a measured amount of water, and let it rest covered.",
     "Rinsing removes surface starch that makes rice sticky. Resting for ten minutes lets the moisture even out."),
]
FORMAL_OPEN = ["Certainly.", "To answer your question:", "In short:"]
CASUAL_OPEN = ["Oh, easy!", "Haha okay so,", "Yeah sure, so basically"]
FORMAL_CLOSE = ["I hope this information proves useful.", "Please let me know if you require further detail."]
CASUAL_CLOSE = ["Hope that helps lol!", "Easy peasy, you got this!!"]


def responses(core: str, detail: str):
    """(length, tone, text) for every variant: length/tone are +1 (detailed/formal) or -1 (concise/casual)."""
    out = []
    for tone, opens, closes in [(1, FORMAL_OPEN, FORMAL_CLOSE), (-1, CASUAL_OPEN, CASUAL_CLOSE)]:
        for o in opens:
            out.append((-1, tone, f"{o} {core}"))
            for c in closes:
                out.append((1, tone, f"{o} {core} {detail} {c}"))
    return out


def make_users(n, rng):
    """Each user: (length weight, tone weight); the signs give the group, magnitudes vary per user."""
    users = []
    for u in range(n):
        s_len, s_tone = (1 if u % 2 else -1), (1 if (u // 2) % 2 else -1)
        users.append((s_len * rng.uniform(0.5, 1.5), s_tone * rng.uniform(0.5, 1.5)))
    return users


def comparisons(user, items, topic_ids, n, rng):
    """n (chosen, rejected) item indices on the given topics, labelled by the user's utility."""
    out = []
    while len(out) < n:
        t = rng.choice(topic_ids)
        i, j = rng.sample(items[t], 2)
        ui = user[0] * i[1] + user[1] * i[2]
        uj = user[0] * j[1] + user[1] * j[2]
        if abs(ui - uj) > 1e-9:
            out.append((i[0], j[0]) if ui > uj else (j[0], i[0]))
    return out



def trunk(hidden, out, mlp_hidden):
    return torch.nn.Sequential(torch.nn.Linear(hidden, mlp_hidden), torch.nn.GELU(), torch.nn.Linear(mlp_hidden, out))


def fit(params, loss_fn, steps, lr):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    return loss.item()


def encode():
    """Frozen MiniLM features of every response, the prompt features per response, items per topic."""
    from prefalign.models.encoders import minilm_path
    from prefalign.rewards.backbone import RewardBackbone

    prompts, texts, items = [], [], []  # items[t] = [(feature row, length, tone), ...]
    for t, (q, core, detail) in enumerate(TOPICS):
        items.append([])
        for length, tone, text in responses(core, detail):
            items[t].append((len(texts), length, tone))
            prompts.append(q)
            texts.append(text)
    backbone = RewardBackbone(minilm_path(), max_length=128).eval()
    feats = backbone.embed(prompts, texts)
    topic_of = torch.tensor([t for t in range(len(TOPICS)) for _ in items[t]])
    prompt_feats = backbone.embed([q for q, _, _ in TOPICS], [""] * len(TOPICS))[topic_of]
    return feats, prompt_feats, items, backbone.hidden_size


def compare_models(users: int = 40, unseen_users: int = 16, per_user: int = 40, prototypes: int = 4, dim: int = 16,
                   mlp_hidden: int = 64, steps: int = 300, lr: float = 1e-2, shots=(0, 1, 2, 4, 8, 16),
                   seed: int = 0, query: int = 30, draws: int = 1) -> dict:
    """PAL vs one BT head on seen users (held-out questions), then PAL's few-shot curve on unseen users."""
    from prefalign.rewards.pal import PALHead, fit_user_weights, ideal_points, pal_reward

    torch.manual_seed(seed)
    rng = random.Random(seed)
    feats, prompt_feats, items, hidden = encode()
    train_topics, test_topics = list(range(12)), list(range(12, len(TOPICS)))
    population = make_users(users, rng)
    train, test = [], []
    for u, pref in enumerate(population):
        train += [(c, r, u) for c, r in comparisons(pref, items, train_topics, per_user, rng)]
        test += [(c, r, u) for c, r in comparisons(pref, items, test_topics, 20, rng)]
    tr, te = torch.tensor(train), torch.tensor(test)
    pal = PALHead(hidden, n_users=users, n_prototypes=prototypes, dim=dim, mode="B", mlp_hidden=mlp_hidden)
    bt = trunk(hidden, 1, mlp_hidden)

    def pal_margin(rows, weights):
        """r_u(chosen) - r_u(rejected): f and the prototypes run once per distinct response, rows gather."""
        item, protos = pal.item(feats), pal.prototype_points(prompt_feats)  # [T, d], [T, K, d]
        ideal = ideal_points(protos[rows[:, 0]], weights)  # chosen and rejected share the prompt
        return pal_reward(item[rows[:, 0]], ideal) - pal_reward(item[rows[:, 1]], ideal)

    def bt_margin(rows):
        r = bt(feats)[:, 0]
        return r[rows[:, 0]] - r[rows[:, 1]]

    pal_loss = fit(pal.parameters(), lambda: -F.logsigmoid(pal_margin(tr, pal.user_weights(tr[:, 2]))).mean(),
                   steps, lr)
    bt_loss = fit(bt.parameters(), lambda: -F.logsigmoid(bt_margin(tr)).mean(), steps, lr)
    with torch.no_grad():
        pal_right = (pal_margin(te, pal.user_weights(te[:, 2])) > 0).float()
        bt_right = (bt_margin(te) > 0).float()
    per_user = lambda right: torch.stack([right[te[:, 2] == i].mean() for i in range(users)])  # noqa: E731
    out = {"n_train_comparisons": len(tr), "n_test_comparisons": len(te),
           "pal": {"final_train_loss": pal_loss, "per_user_accuracy_mean": per_user(pal_right).mean().item(),
                   "per_user_accuracy_min": per_user(pal_right).min().item()},
           "bt": {"final_train_loss": bt_loss, "per_user_accuracy_mean": per_user(bt_right).mean().item(),
                  "per_user_accuracy_min": per_user(bt_right).min().item()}}
    for p in pal.parameters():  # unseen users: only their K weights are fitted
        p.requires_grad_(False)
    new_users, curve, spread = make_users(unseen_users, rng), {}, {}
    for n in shots:
        per_user_acc = []
        for pref in new_users:
            # the expected accuracy over `draws` support sets: one draw of n comparisons is a noisy estimate
            right = []
            for _ in range(draws):
                support = torch.tensor(comparisons(pref, items, train_topics, max(n, 1), rng))[:n]
                asked = torch.tensor(comparisons(pref, items, test_topics, query, rng))
                w = fit_user_weights(pal, feats[support[:, 0]], feats[support[:, 1]], prompt_feats[support[:, 0]])
                with torch.no_grad():
                    right.append((pal_margin(asked, w.expand(len(asked), -1)) > 0).float().mean().item())
            per_user_acc.append(sum(right) / draws)
        acc = torch.tensor(per_user_acc, dtype=torch.float64)
        curve[n] = float(acc.mean())
        spread[n] = float(acc.std() / math.sqrt(len(acc)))  # the users are the independent units
    out["unseen_users_accuracy_by_shots"] = curve
    out["unseen_users_standard_error_by_shots"] = spread
    return out


def verdict(r: dict, shots_for_rule: int = 8) -> tuple[Verdict, str]:
    pal_acc, bt_acc = r["pal"]["per_user_accuracy_mean"], r["bt"]["per_user_accuracy_mean"]
    if bt_acc >= 0.65:
        return Verdict.INCONCLUSIVE, (f"a single BT reward already reaches {bt_acc:.3f} >= 0.65 per user: "
                                      "the population is not contested enough to need pluralism")
    curve, se_by_n = r["unseen_users_accuracy_by_shots"], r["unseen_users_standard_error_by_shots"]
    ns = sorted(curve)
    drops = []
    for a, b in zip(ns, ns[1:]):
        se = math.sqrt(se_by_n[a] ** 2 + se_by_n[b] ** 2)
        if curve[b] < curve[a] - 2 * se:
            drops.append(f"{a}->{b} shots: {curve[a]:.3f} -> {curve[b]:.3f} (2 SE = {2 * se:.3f})")
    rules = [(f"seen users PAL {pal_acc:.3f} - BT {bt_acc:.3f} = {pal_acc - bt_acc:.3f} >= 0.15", pal_acc - bt_acc >= 0.15),
             (f"unseen users at {shots_for_rule} shots {curve[shots_for_rule]:.3f} >= 0.80",
              curve[shots_for_rule] >= 0.8),
             ("few-shot curve never drops by more than 2 SE" + (": " + "; ".join(drops) if drops else ""), not drops)]
    failed = [t for t, ok in rules if not ok]
    if failed:
        return Verdict.FAIL, "rule(s) failed: " + "; ".join(failed)
    return Verdict.PASS, "; ".join(t for t, _ in rules)


@claim("pal-plural", paper="PAL: Pluralistic Alignment Framework for Learning from Heterogeneous Preferences "
       "(arXiv:2406.08469)", paper_claim="+1.7% accuracy on seen and +36% on unseen users over the previous best "
       "(Reddit TL;DR, 7 users prefer longer, 3 shorter); a few comparisons adapt a new user")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    # one thread: tiny heads, where thread syncs on a shared 2-core machine cost more than the flops
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = (dict(users=16, unseen_users=8, per_user=30, steps=150, shots=(0, 1, 2, 8), draws=3) if quick else
                    dict(users=40, unseen_users=16, per_user=40, steps=300, shots=(0, 1, 2, 4, 8, 16), draws=4))
        r = compare_models(**settings)
    finally:
        torch.set_num_threads(threads)
    v, reason = verdict(r)
    curve = r["unseen_users_accuracy_by_shots"]
    measured = (f"{settings['users']} users in 4 opposed groups, held-out questions: per-user accuracy PAL "
                f"{r['pal']['per_user_accuracy_mean']:.3f}, one BT {r['bt']['per_user_accuracy_mean']:.3f}; "
                "unseen users " + ", ".join(f"{curve[n]:.2f} ({n} shots)" for n in sorted(curve)))
    table = [{"shots": n, "unseen-user accuracy": f"{curve[n]:.3f}"} for n in sorted(curve)]
    return ClaimResult(v, measured, reason, {**r, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in settings.items()}}, table=table)
