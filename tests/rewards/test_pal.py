import math

import pytest
import torch

from prefalign.rewards.model import load_pal, save_pal
from prefalign.rewards.pal import PALHead, fit_user_weights, ideal_points, pal_loss, pal_reward


@pytest.fixture
def one_thread():
    """Tiny training loops: thread syncs, not flops, dominate on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hand_head_a() -> PALHead:
    """Model A, d = 1, prototypes p1 = 0, p2 = 2, f(y) = y; user 0 has theta = (0, 0) -> w = (.5, .5),
    user 1 has theta = (ln 3, 0) -> w = (.75, .25)."""
    head = PALHead(hidden_size=1, n_users=2, n_prototypes=2, dim=1, mode="A")
    with torch.no_grad():
        head.item.weight.fill_(1.0)
        head.item.bias.zero_()
        head.prototypes.copy_(torch.tensor([[0.0], [2.0]]))
        head.user_logits.copy_(torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]))
    return head


def test_model_a_hand_numbers():
    """y1 = 0, y2 = 2. User 0: a = 1, r = (-1, -1), P = 1/2, loss = ln 2.
    User 1: a = .75*0 + .25*2 = 0.5, r(y1) = -0.25, r(y2) = -2.25, P(y1 > y2) = sigmoid(2) = 0.880797,
    loss = log(1 + e^-2) = 0.126928."""
    head = hand_head_a()
    y1, y2 = torch.tensor([[0.0], [0.0]]), torch.tensor([[2.0], [2.0]])
    users = torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.allclose(head.user_weights(users), torch.tensor([[0.5, 0.5], [0.75, 0.25]]))
        assert torch.allclose(head.rewards(y1, user_ids=users), torch.tensor([-1.0, -0.25]))
        assert torch.allclose(head.rewards(y2, user_ids=users), torch.tensor([-1.0, -2.25]))
        loss = head.loss(y1, y2, user_ids=users)
    assert loss[0].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert loss[1].item() == pytest.approx(0.126928, abs=1e-6)


def test_model_b_prototypes_follow_the_prompt():
    """p1(x) = x[0], p2(x) = x[1]; f(y) = y[0]. Prompt (0, 4), y1 = 1, y2 = 3.
    w = (.5, .5): a = 2, r = (-1, -1): P = 1/2. w = (.25, .75): a = 3, r = (-4, 0): P(y1 > y2) = sigmoid(-4)."""
    head = PALHead(hidden_size=2, n_users=1, n_prototypes=2, dim=1, mode="B")
    with torch.no_grad():
        head.item.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.item.bias.zero_()
        head.prototype_map.weight.copy_(torch.eye(2))
        head.prototype_map.bias.zero_()
        x, y1, y2 = torch.tensor([[0.0, 4.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 0.0]])
        assert head.rewards(y1, x, weights=torch.tensor([0.5, 0.5])).item() == pytest.approx(-1.0)
        w = torch.tensor([[0.25, 0.75]])
        assert head.rewards(y1, x, weights=w).item() == pytest.approx(-4.0)
        assert head.rewards(y2, x, weights=w).item() == pytest.approx(0.0)
        assert head.loss(y1, y2, x, weights=w).item() == pytest.approx(-math.log(1 / (1 + math.exp(4.0))), abs=1e-5)
    with pytest.raises(ValueError, match="prompt_features"):
        head.rewards(y1, None, weights=w)


def test_pure_functions_match_formulas():
    protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [N=1, K=2, d=2]
    a = ideal_points(protos, torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(a, torch.tensor([[0.25, 0.75]]))
    assert pal_reward(torch.tensor([[1.0, 1.0]]), a).item() == pytest.approx(-(0.75 ** 2 + 0.25 ** 2))
    assert pal_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2.0))


def test_bad_inputs_raise():
    head = hand_head_a()
    with pytest.raises(ValueError, match="0..1"):
        head.rewards(torch.zeros(1, 1), user_ids=torch.tensor([2]))
    with pytest.raises(ValueError, match="exactly one"):
        head.rewards(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="mode"):
        PALHead(4, 2, mode="C")


def test_few_shot_fit_recovers_an_unseen_users_weights_and_freezes_the_rest(one_thread):
    """Prototypes at -2 and +2 (d = 1). An unseen user whose ideal point is the first prototype
    prefers, of two items, the one closer to -2: the fit must put almost all weight on prototype 1."""
    head = hand_head_a()
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[-2.0], [2.0]]))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(8, 1, generator=g) * 6 - 3, torch.rand(8, 1, generator=g) * 6 - 3
    a_closer = (a + 2).abs() < (b + 2).abs()
    chosen, rejected = torch.where(a_closer, a, b), torch.where(a_closer, b, a)
    w = fit_user_weights(head, chosen, rejected)
    assert w[0] > 0.9 and w.sum().item() == pytest.approx(1.0)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    assert torch.allclose(fit_user_weights(head, chosen[:0], rejected[:0]), torch.tensor([0.5, 0.5]))


def test_pal_beats_a_single_bt_model_on_opposed_groups(one_thread):
    """Two groups of users with opposite tastes along one feature direction: a single scalar BT
    reward sees both orders equally often and sits near chance; PAL gives each group its own ideal point."""
    torch.manual_seed(0)
    dim, n_users = 6, 8
    taste = torch.randn(dim)

    def sample(n):
        a, b = torch.randn(n, dim), torch.randn(n, dim)
        users = torch.randint(0, n_users, (n,))
        sign = torch.where(users % 2 == 0, 1.0, -1.0)
        a_wins = (sign * ((a - b) @ taste)) > 0
        return torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a), users

    cw, cl, cu = sample(1200)
    tw, tl, tu = sample(400)
    pal = PALHead(dim, n_users, n_prototypes=2, dim=4, mode="A")
    bt = torch.nn.Linear(dim, 1)
    for params, loss_fn in [(pal.parameters(), lambda: pal.loss(cw, cl, user_ids=cu).mean()),
                            (bt.parameters(), lambda: pal_loss(bt(cw)[:, 0], bt(cl)[:, 0]).mean())]:
        opt = torch.optim.Adam(params, lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
    with torch.no_grad():
        pal_acc = (pal.rewards(tw, user_ids=tu) > pal.rewards(tl, user_ids=tu)).float().mean().item()
        bt_acc = (bt(tw) > bt(tl)).float().mean().item()
    assert pal_acc > 0.9
    assert bt_acc < 0.65


def test_save_and_load_round_trip(tmp_path, tiny_model_dir):
    """The common reward-model folder (load_reward_model) with the user names in reward_model.json."""
    from prefalign.rewards.backbone import RewardBackbone

    torch.manual_seed(0)
    bb = RewardBackbone(str(tiny_model_dir), max_length=32)
    head = PALHead(bb.hidden_size, n_users=2, n_prototypes=2, dim=3, mode="B")
    with torch.no_grad():
        head.user_logits.copy_(torch.tensor([[1.0, -1.0], [0.0, 2.0]]))
    folder = save_pal(tmp_path / "pal", head, bb, users=["alice", "bob"])
    assert {p.name for p in folder.iterdir()} == {"backbone", "head.safetensors", "reward_model.json"}
    head2, bb2, users = load_pal(folder)
    assert users == ["alice", "bob"] and bb2.decoder
    assert {k: v for k, v in head2.params.items() if k != "users"} == {k: v for k, v in head.params.items() if k != "users"}
    x, fx = torch.randn(4, bb.hidden_size), torch.randn(4, bb.hidden_size)
    ids = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        assert torch.equal(head.rewards(x, fx, user_ids=ids), head2.rewards(x, fx, user_ids=ids))
    assert head2.user_indices(["bob", "alice"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="carol"):
        head2.user_indices(["carol"])
    with pytest.raises(ValueError, match="user names"):
        save_pal(tmp_path / "bad", head, bb, users=["only-one"])
