"""The generative-recommender family: the synthetic log and its true utility, the MovieLens reader, session
scores against a position-by-position computation (left padding included), sampling and beam search against
their definitions, DPO through FamilyTrainee against the formula with gradient, recall@10 by hand."""

from __future__ import annotations

import importlib.util
import math
from itertools import permutations
from types import SimpleNamespace

import pytest
import torch

from prefalign.families.base import FamilyTrainee, check_trainable, get_family
from prefalign.families.recommender import (OFFSET, NextItemTrainee, RecommenderFamily, SessionPair, beam_pairs,
                                            beam_search, recall_at_k, sample_sessions, session_logps, tiny_llama)
from prefalign.families.recommender_data import (InteractionLog, LogRewardModel, fit_reward_model, read_inter,
                                                 recbole_ml100k, synthetic_log)
from prefalign.losses import get_objective


class Unwrap:
    def unwrap_model(self, m):
        return m


def direct_logp(model, history: list[int], session: list[int]) -> torch.Tensor:
    """Sum of log P(s_j | BOS, history, s_<j): one unpadded forward per prefix, the softmax taken over
    the items not yet in the prefix (no PAD, no BOS), written out without the family's code."""
    prefix, total = [1] + [i + OFFSET for i in history], torch.zeros(())
    for item in session:
        logits = model(input_ids=torch.tensor([prefix])).logits[0, -1]
        allowed = [t for t in range(OFFSET, logits.shape[0]) if t not in prefix]
        logz = torch.logsumexp(logits[allowed], 0)
        total = total + logits[item + OFFSET] - logz
        prefix = prefix + [item + OFFSET]
    return total


def test_synthetic_log_is_seeded_follows_the_tastes_and_its_utility_is_u_dot_v_plus_b():
    log = synthetic_log(n_users=120, n_items=64, n_genres=8, dim=8, history_len=10, seed=3)
    assert log.histories == synthetic_log(n_users=120, n_items=64, n_genres=8, dim=8, history_len=10, seed=3).histories
    assert log.histories != synthetic_log(n_users=120, n_items=64, n_genres=8, dim=8, history_len=10, seed=4).histories
    assert all(len(set(h)) == len(h) == 10 for h in log.histories)  # drawn without replacement
    u, i = 7, 13
    expected = sum(a * b for a, b in zip(log.user_vectors[u].tolist(), log.item_vectors[i].tolist())) / math.sqrt(8) \
        + log.popularity[i].item()
    assert log.utility(torch.tensor(u), torch.tensor([i])).item() == pytest.approx(expected, rel=1e-5)
    # histories concentrate on the user's own genre (chance: 1/8) and on high-utility items
    genres = log.item_genre[torch.tensor(log.histories)]
    assert (genres == log.user_genre[:, None]).float().mean() > 2 / 8
    everything = log.utility(torch.arange(120), torch.arange(64).expand(120, 64))
    assert log.utility(torch.arange(120), torch.tensor(log.histories)).mean() > everything.mean() + 1.0


def test_split_leaves_the_last_items_out_and_refuses_users_with_nothing_left():
    log = InteractionLog([[1, 2, 3], [4, 5]], 6, "toy")
    assert log.split(1) == ([[1, 2], [4]], [[3], [5]])
    with pytest.raises(ValueError, match=r"toy: users \[1\]"):
        log.split(2)
    with pytest.raises(ValueError, match="no known tastes"):
        log.utility(torch.tensor(0), torch.tensor([1]))


def test_read_inter_orders_by_time_renumbers_items_and_names_bad_rows(tmp_path):
    path = tmp_path / "toy.inter"
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "u1\t50\t3\t300", "u1\t60\t4\t100", "u2\t60\t5\t10", "u1\t70\t1\t200", "u2\t80\t2\t20", "u3\t50\t2\t5"]
    path.write_text("\n".join(rows) + "\n")
    log = read_inter(path, min_items=2)
    # u1 by time: 60 (100), 70 (200), 50 (300); ids in order of first appearance: 60 -> 0, 70 -> 1, 50 -> 2
    assert log.histories == [[0, 1, 2], [0, 3]]
    assert log.n_items == 4 and "1 users under 2 items dropped" in log.source
    path.write_text("\n".join(rows[:2] + ["u1\t60\t4\tyesterday"]) + "\n")
    with pytest.raises(ValueError, match=r"toy.inter: row 3, field 'timestamp'"):
        read_inter(path)
    path.write_text("user_id:token\trating:float\nu1\t3\n")
    with pytest.raises(ValueError, match="no 'item_id' field"):
        read_inter(path)


def test_recbole_ml100k_is_read_from_the_installed_package_only(tmp_path, monkeypatch):
    data = tmp_path / "recbole" / "dataset_example" / "ml-100k"
    data.mkdir(parents=True)
    (data / "ml-100k.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: SimpleNamespace(
        submodule_search_locations=[str(tmp_path / "recbole")]) if name == "recbole" else real(name, *a))
    assert recbole_ml100k() == data / "ml-100k.inter"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a))
    assert recbole_ml100k() is None


def test_session_score_is_the_restricted_log_likelihood_with_left_padding():
    model = tiny_llama(12, hidden=32, seed=1)
    fam = get_family("recommender")()
    pairs = [SessionPair(0, [3, 7, 1, 9], [2, 5], [11, 0]), SessionPair(1, [4], [6, 4 + 1], [10, 8])]
    scores = fam.score(model, fam.make_batch(pairs, [0, 1], "train"), generator_seed=0)
    expected = [[direct_logp(model, p.history, s).item() for s in (p.chosen, p.rejected)] for p in pairs]
    assert torch.allclose(scores, torch.tensor(expected), atol=1e-5)
    assert session_logps(model, [p.history for p in pairs], torch.tensor([p.chosen for p in pairs])).tolist() == \
        pytest.approx([e[0] for e in expected], abs=1e-5)
    with pytest.raises(ValueError, match="one length"):
        fam.make_batch([pairs[0], SessionPair(2, [1], [2, 3, 4], [5, 6, 7])], [0, 1], "train")


def test_sampling_draws_unseen_items_from_the_scored_distribution_and_is_seeded():
    model = tiny_llama(10, hidden=32, seed=2)
    history = [[0, 1, 2]]
    drawn = sample_sessions(model, history, 3000, 1, seed=5)[0, :, 0]
    assert torch.equal(drawn, sample_sessions(model, history, 3000, 1, seed=5)[0, :, 0])
    assert not set(drawn.tolist()) & {0, 1, 2}
    probs = torch.stack([direct_logp(model, history[0], [i]).exp() for i in range(3, 10)]).detach()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    empirical = torch.bincount(drawn - 3, minlength=7).float() / 3000
    assert (empirical - probs).abs().sum() / 2 < 0.05  # total variation; its sampling noise is about 0.02
    sessions = sample_sessions(model, [[0], [5, 6]], 20, 4, seed=1)
    for h, user in zip([[0], [5, 6]], sessions.tolist()):
        assert all(len(set(s)) == 4 and not set(s) & set(h) for s in user)


def test_beam_search_with_every_beam_is_the_exhaustive_ranking():
    model = tiny_llama(5, hidden=32, seed=3)
    history = [4]
    sessions = [list(p) for p in permutations(range(4), 2)]  # every session of 2 unseen items: 12
    brute = sorted(((direct_logp(model, history, s).item(), s) for s in sessions), reverse=True)
    items, scores = beam_search(model, [history], beams=12, length=2)
    assert items[0].tolist() == [s for _, s in brute]
    assert scores[0].tolist() == pytest.approx([v for v, _ in brute], abs=1e-5)
    top, top_scores = beam_search(model, [history, [0, 1]], beams=3, length=2)
    assert top_scores[0, 0].item() == pytest.approx(brute[0][0], abs=1e-5)  # the best session survives the beam
    assert top_scores.tolist() == [sorted(row, reverse=True) for row in top_scores.tolist()]
    with pytest.raises(ValueError, match="13 beams exceed"):
        beam_search(model, [history], beams=13, length=2)


def test_dpo_on_sessions_through_family_trainee_matches_the_formula_with_gradient():
    policy, reference = tiny_llama(8, hidden=32, seed=4), tiny_llama(8, hidden=32, seed=5)
    beta = 0.3
    pairs = [SessionPair(0, [1, 2, 3], [4, 5], [6, 7]), SessionPair(1, [0, 7], [1, 6], [3, 2])]
    fam = RecommenderFamily()
    trainee = FamilyTrainee(Unwrap(), fam, policy, reference, get_objective("dpo"), {"beta": beta})
    per_example, metrics = trainee.loss(fam.make_batch(pairs, [0, 1], "train"))
    per_example.sum().backward()
    got = policy.lm_head.weight.grad.clone()
    policy.zero_grad()
    expected = []
    for p in pairs:
        z = beta * ((direct_logp(policy, p.history, p.chosen) - direct_logp(reference, p.history, p.chosen).detach())
                    - (direct_logp(policy, p.history, p.rejected) - direct_logp(reference, p.history, p.rejected).detach()))
        expected.append(torch.log1p(torch.exp(-z)))
    torch.stack(expected).sum().backward()
    assert per_example.tolist() == pytest.approx([e.item() for e in expected], rel=1e-5)
    assert torch.allclose(got, policy.lm_head.weight.grad, atol=1e-6)
    assert reference.lm_head.weight.grad is None
    with pytest.raises(ValueError, match="kinds"):
        check_trainable(fam, get_objective("kto"))


def test_next_item_loss_is_the_mean_restricted_nll_of_each_history():
    model = tiny_llama(9, hidden=32, seed=6)
    histories = [[3, 1, 4, 0], [8, 2]]
    trainee = NextItemTrainee(model)
    per_example, _ = trainee.loss(trainee.make_batch([SimpleNamespace(items=h) for h in histories], [0, 1], "train"))
    expected = [-direct_logp(model, [], h).item() / len(h) for h in histories]
    assert per_example.tolist() == pytest.approx(expected, abs=1e-5)


class FixedScores(torch.nn.Module):
    """A stand-in model whose next-token logits are one fixed vector per row, whatever the prefix."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.logits[:, None, :].expand(-1, input_ids.shape[1], -1))


def test_recall_at_k_ranks_unseen_items_only():
    # tokens: PAD, BOS, items 0..5. User 0 saw item 0 (the top score): item 3 ranks 2nd among unseen
    # items (after 1) -> a hit at k=2, NDCG 1/log2(3). User 1: item 5 ranks 3rd of the unseen -> a miss at k=2
    model = FixedScores([[9.0, 9.0, 6.0, 5.0, 1.0, 4.0, 0.0, 2.0], [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5]])
    hits, ndcg = recall_at_k(model, [[0], [4]], [[3], [5]], k=2)
    assert hits.tolist() == [1.0, 0.0]
    assert ndcg.tolist() == pytest.approx([1 / math.log2(3), 0.0])


def test_reward_model_fitted_on_the_log_ranks_items_like_the_true_utility():
    log = synthetic_log(n_users=120, n_items=64, history_len=12, seed=1)
    train, _ = log.split()
    rm = fit_reward_model(train, log.n_items, steps=80)
    users, items = torch.arange(120), torch.arange(64).expand(120, 64)
    truth, fitted = log.utility(users, items), rm(users, items)
    top = fitted.topk(5, dim=1).indices  # the simulator's favourite items are truly good, far above average
    assert truth.gather(1, top).mean() > truth.mean() + 1.5
    fresh = LogRewardModel(120, 64)
    assert truth.gather(1, fresh(users, items).topk(5, dim=1).indices).mean() < truth.mean() + 1.0


def test_beam_pairs_pick_the_reward_models_best_and_worst_beam():
    model = tiny_llama(10, hidden=32, seed=7)
    rm = LogRewardModel(3, 10, seed=8)
    histories = [[0, 1], [2], [3, 4, 5]]
    pairs, counts = beam_pairs(model, rm, [0, 1, 2], histories, beams=4, length=2, seed=0, round=0)
    beams, _ = beam_search(model, histories, 4, 2)
    assert counts["examples"] == 3 and counts["dropped"] == 0
    for u, p in enumerate(pairs):
        rewards = rm.session_reward(torch.tensor([u] * 4), beams[u])
        assert p.user == u and p.history == histories[u]
        assert p.chosen == beams[u, rewards.argmax()].tolist() and p.rejected == beams[u, rewards.argmin()].tolist()


def test_family_weights_round_trip_through_safetensors(tmp_path):
    fam, a, b = RecommenderFamily(), tiny_llama(6, hidden=32, seed=9), tiny_llama(6, hidden=32, seed=10)
    fam.save(a, tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    fam.load(b, tmp_path)
    ids = torch.tensor([[1, 3, 4, 5]])
    assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
