#!/usr/bin/env python
"""Real check: PAL learns a population whose users disagree, and adapts to unseen users from a few comparisons.

Synthetic population (arXiv 2406.08469's setting, made small): answers to real-looking questions
vary along two attributes, length (concise / detailed) and tone (formal / casual). Users fall into
four equal groups with opposite tastes (concise+formal, concise+casual, detailed+formal,
detailed+casual); each user weighs the two attributes with their own random strengths, so a
single Bradley-Terry reward sees every order equally often and cannot beat chance on average.
Responses are encoded by the real all-MiniLM-L6-v2 encoder through prefalign's RewardBackbone,
frozen; PAL (model B, prompt-dependent prototypes) and a single BT head share the MLP trunk and
are trained the same way. Held-out comparisons use questions never seen in training.
Unseen users: their K mixture weights are fitted from n of their comparisons with everything
else frozen (`fit_user_weights`), and scored on 30 held-out comparisons each.

    python scripts/check_pal_users.py               # ~1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prefalign.models.encoders import minilm_path
from prefalign.rewards.backbone import RewardBackbone
from prefalign.rewards.pal import PALHead, fit_user_weights, ideal_points, pal_reward

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


@torch.no_grad()
def pool(backbone, prompts, texts, batch=64):
    return torch.cat([backbone(**backbone.encode(prompts[s:s + batch], texts[s:s + batch]))
                      for s in range(0, len(texts), batch)])


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=40, help="training users (4 groups)")
    ap.add_argument("--unseen-users", type=int, default=16)
    ap.add_argument("--per-user", type=int, default=40, help="training comparisons per user")
    ap.add_argument("--prototypes", type=int, default=4)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--mlp-hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--shots", default="0,1,2,4,8,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/check_pal_users.json")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    # one thread: the heads are tiny, and on a shared 2-core machine two threads spend ~100x longer
    # waiting on each other than computing (measured: 100 Adam steps of a 384x64 MLP, 0.2 s vs 27 s)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    start = time.time()

    # items[t] = [(feature row, length, tone), ...]; prompt features per topic
    prompts, texts, items = [], [], []
    for t, (q, core, detail) in enumerate(TOPICS):
        items.append([])
        for length, tone, text in responses(core, detail):
            items[t].append((len(texts), length, tone))
            prompts.append(q)
            texts.append(text)
    backbone = RewardBackbone(minilm_path(), max_length=128).eval()
    feats = pool(backbone, prompts, texts)
    topic_of = torch.tensor([t for t in range(len(TOPICS)) for _ in items[t]])
    prompt_feats = pool(backbone, [q for q, _, _ in TOPICS], [""] * len(TOPICS))[topic_of]
    train_topics, test_topics = list(range(12)), list(range(12, len(TOPICS)))
    print(f"{len(texts)} responses to {len(TOPICS)} questions ({len(test_topics)} held out); "
          f"features in {time.time() - start:.1f}s")

    users = make_users(args.users, rng)
    train, test = [], []
    for u, pref in enumerate(users):
        train += [(c, r, u) for c, r in comparisons(pref, items, train_topics, args.per_user, rng)]
        test += [(c, r, u) for c, r in comparisons(pref, items, test_topics, 20, rng)]
    tr, te = torch.tensor(train), torch.tensor(test)

    pal = PALHead(backbone.hidden_size, n_users=args.users, n_prototypes=args.prototypes, dim=args.dim,
                  mode="B", mlp_hidden=args.mlp_hidden)
    bt = trunk(backbone.hidden_size, 1, args.mlp_hidden)

    def pal_margin(rows, weights):
        """r_u(chosen) - r_u(rejected): f and the prototypes run once per distinct response, rows gather."""
        items, protos = pal.item(feats), pal.prototype_points(prompt_feats)  # [T, d], [T, K, d]
        ideal = ideal_points(protos[rows[:, 0]], weights)  # chosen and rejected share the prompt
        return pal_reward(items[rows[:, 0]], ideal) - pal_reward(items[rows[:, 1]], ideal)

    def bt_margin(rows):
        r = bt(feats)[:, 0]
        return r[rows[:, 0]] - r[rows[:, 1]]

    pal_loss = fit(pal.parameters(), lambda: -F.logsigmoid(pal_margin(tr, pal.user_weights(tr[:, 2]))).mean(),
                   args.steps, args.lr)
    bt_loss = fit(bt.parameters(), lambda: -F.logsigmoid(bt_margin(tr)).mean(), args.steps, args.lr)
    with torch.no_grad():
        pal_right = (pal_margin(te, pal.user_weights(te[:, 2])) > 0).float()
        bt_right = (bt_margin(te) > 0).float()
    per_user = lambda right: torch.stack([right[te[:, 2] == i].mean() for i in range(args.users)])  # noqa: E731
    results = {"args": vars(args), "n_train_comparisons": len(tr), "n_test_comparisons": len(te),
               "pal": {"final_train_loss": pal_loss, "per_user_accuracy_mean": per_user(pal_right).mean().item(),
                       "per_user_accuracy_min": per_user(pal_right).min().item()},
               "bt": {"final_train_loss": bt_loss, "per_user_accuracy_mean": per_user(bt_right).mean().item(),
                      "per_user_accuracy_min": per_user(bt_right).min().item()}}
    print(f"seen users, held-out questions: PAL per-user accuracy {results['pal']['per_user_accuracy_mean']:.3f} "
          f"(worst user {results['pal']['per_user_accuracy_min']:.3f}); single BT "
          f"{results['bt']['per_user_accuracy_mean']:.3f} (worst user {results['bt']['per_user_accuracy_min']:.3f})")

    # unseen users: fit only their K weights from n comparisons (training questions), test on held-out questions
    for p in pal.parameters():
        p.requires_grad_(False)
    train_seconds = time.time() - start
    shots = [int(s) for s in args.shots.split(",")]
    new_users = make_users(args.unseen_users, rng)
    curve = {}
    for n in shots:
        accs = []
        for pref in new_users:
            support = torch.tensor(comparisons(pref, items, train_topics, max(n, 1), rng))[:n]
            query = torch.tensor(comparisons(pref, items, test_topics, 30, rng))
            w = fit_user_weights(pal, feats[support[:, 0]], feats[support[:, 1]], prompt_feats[support[:, 0]])
            with torch.no_grad():
                accs.append((pal_margin(query, w.expand(len(query), -1)) > 0).float().mean().item())
        curve[n] = sum(accs) / len(accs)
        print(f"unseen users, {n:2d} shots: accuracy {curve[n]:.3f}")
    results["unseen_users_accuracy_by_shots"] = curve
    results["seconds"] = round(time.time() - start, 1)
    results["seconds_until_unseen_users"] = round(train_seconds, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{results['seconds']}s; wrote {out}")


if __name__ == "__main__":
    main()
