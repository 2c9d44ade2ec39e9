import math

import pytest
import torch

from prefalign.rewards.gpm import GPMHead, gpm_loss, gpm_probability, preference_matrix, preference_score, skew_operator
from prefalign.rewards.model import load_gpm, save_gpm


@pytest.fixture
def one_thread():
    """Tiny training loops: thread syncs, not flops, dominate on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(deg: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


def test_operator_is_the_explicit_block_matrix():
    expected = torch.tensor([[0., -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, -1], [0, 0, 1, 0]])
    assert torch.equal(skew_operator(2), expected)
    lam = torch.tensor([[2.0, 3.0]])
    scaled = torch.tensor([[0., -2, 0, 0], [2, 0, 0, 0], [0, 0, 0, -3], [0, 0, 3, 0]])
    assert torch.equal(skew_operator(2, lam)[0], scaled)
    # the fast score equals <R v_a, v_b> with the explicit matrix
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    lam = torch.rand(5, 3, generator=g) + 0.1
    R = skew_operator(3, lam)
    explicit = torch.einsum("nij,nj,ni->n", R, a, b)
    assert torch.allclose(preference_score(a, b, lam), explicit, atol=1e-6)
    assert torch.allclose(preference_score(a, b), (a @ skew_operator(3).T * b).sum(-1), atol=1e-6)


def test_hand_example_rock_paper_scissors():
    """Rock at 0 deg, scissors at 120, paper at 240 (k = 1, lambda = 2). For unit blocks
    s(a > b) = lambda * (a1 b2 - a2 b1) = lambda * sin(angle_b - angle_a), so
    s(rock > scissors) = 2 sin(120) = sqrt(3), s(scissors > paper) = 2 sin(120) = sqrt(3),
    s(paper > rock) = 2 sin(0 - 240) = 2 sin(120) = sqrt(3): the cycle rock > scissors > paper > rock.
    P = sigmoid(sqrt(3)) = 0.849675; with beta = 2 the loss is log(1 + exp(-sqrt(3)/2)) = 0.351093."""
    rock, scissors, paper = unit(0), unit(120), unit(240)
    lam = torch.tensor([2.0])
    s = lambda a, b: preference_score(a[None], b[None], lam[None]).item()  # noqa: E731
    root3 = math.sqrt(3.0)
    assert s(rock, scissors) == pytest.approx(root3, abs=1e-6)
    assert s(scissors, paper) == pytest.approx(root3, abs=1e-6)
    assert s(paper, rock) == pytest.approx(root3, abs=1e-6)
    p = gpm_probability(rock[None], scissors[None], lam[None]).item()
    assert p == pytest.approx(0.849675, abs=1e-6)
    loss = gpm_loss(rock[None], scissors[None], lam[None], beta=2.0).item()
    assert loss == pytest.approx(0.351093, abs=1e-6)
    M = preference_matrix(torch.stack([rock, scissors, paper]), lam)
    assert torch.allclose(M, torch.tensor([[0, root3, -root3], [-root3, 0, root3], [root3, -root3, 0]]), atol=1e-6)


def test_skew_symmetry_and_self_comparison_are_exact():
    torch.manual_seed(0)
    head = GPMHead(hidden_size=8, k=3, gate=True)
    a, b, x = torch.randn(16, 8), torch.randn(16, 8), torch.randn(16, 8)
    out_a, out_b = head(a, x), head(b, x)
    p_ab, p_ba = head.probability(out_a, out_b), head.probability(out_b, out_a)
    assert torch.allclose(p_ab + p_ba, torch.ones(16), atol=1e-7)
    assert torch.equal(head.probability(out_a, out_a), torch.full((16,), 0.5))
    v, lam = out_a["embedding"], out_a["scales"]
    assert v.shape == (16, 6) and lam.shape == (16, 3)
    assert torch.allclose(v.norm(dim=-1), torch.ones(16), atol=1e-6)
    assert (lam > 0).all()
    S = preference_matrix(v[:5], lam[0])
    assert torch.allclose(S, -S.T, atol=1e-6)  # float32 matmul rounding; the per-pair path is exact below


def test_gate_needs_prompt_features_and_fixed_scales_do_not():
    head = GPMHead(hidden_size=4, k=2, gate=True)
    with pytest.raises(ValueError, match="prompt_features"):
        head(torch.randn(3, 4))
    fixed = GPMHead(hidden_size=4, k=2, gate=False)
    lam = fixed(torch.randn(3, 4))["scales"]
    assert torch.allclose(lam, torch.ones(3, 2), atol=1e-4)  # softplus(0.5413) = 1
    half = GPMHead(hidden_size=4, k=2, gate=False, beta=2.0)  # the temperature is folded into the scales
    assert torch.allclose(half(torch.randn(3, 4))["scales"], torch.full((3, 2), 0.5), atol=1e-4)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    lam = (torch.rand(4, 3, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, lam: gpm_loss(a, b, lam, beta=0.7), (a, b, lam))


def test_loss_is_finite_for_huge_scores():
    v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    lam = torch.tensor([[1e4]])
    assert gpm_loss(v[0], v[1], lam).item() == 0.0  # s = +1e4
    assert gpm_loss(v[1], v[0], lam).item() == pytest.approx(1e4)  # s = -1e4, loss = -logsigmoid(-1e4)


def test_learns_a_cycle_that_bradley_terry_cannot(one_thread):
    """Five classes in the rock-paper-scissors-lizard-Spock tournament (each beats the next two),
    one-hot class features plus noise. GPM fits every held-out pair; a scalar BT head cannot do
    better than a total order allows and its max-likelihood fit is all-equal rewards."""
    torch.manual_seed(0)
    n_cls, dim = 5, 12
    centers = torch.randn(n_cls, dim)

    def sample(n):
        i, j = torch.randint(0, n_cls, (n,)), torch.randint(0, n_cls, (n,))
        keep = i != j
        i, j = i[keep], j[keep]
        i_wins = ((j - i) % n_cls) <= 2
        win, lose = torch.where(i_wins, i, j), torch.where(i_wins, j, i)
        noise = lambda m: 0.1 * torch.randn(len(m), dim)  # noqa: E731
        return centers[win] + noise(win), centers[lose] + noise(lose)

    train_w, train_l = sample(600)
    test_w, test_l = sample(300)
    gpm = GPMHead(dim, k=2, gate=False)
    bt = torch.nn.Linear(dim, 1)
    for model, loss_fn in [(gpm, lambda: gpm.loss(train_w, train_l).mean()),
                           (bt, lambda: -torch.nn.functional.logsigmoid(bt(train_w) - bt(train_l)).mean())]:
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
    with torch.no_grad():
        gpm_acc = (gpm.probability(gpm(test_w), gpm(test_l)) > 0.5).float().mean().item()
        bt_acc = (bt(test_w) > bt(test_l)).float().mean().item()
    assert gpm_acc > 0.97
    assert bt_acc < 0.75


def test_save_and_load_round_trip(tmp_path, tiny_model_dir):
    from prefalign.rewards.backbone import RewardBackbone

    torch.manual_seed(0)
    bb = RewardBackbone(str(tiny_model_dir), max_length=32)
    head = GPMHead(bb.hidden_size, k=2, gate=True, mlp_hidden=8)
    folder = save_gpm(tmp_path / "gpm", head, bb)
    assert {p.name for p in folder.iterdir()} == {"backbone", "head.safetensors", "reward_model.json"}
    assert not (tmp_path / ".gpm.tmp").exists()
    head2, bb2 = load_gpm(folder)
    assert bb2.decoder and head2.params == head.params
    feats = torch.randn(3, bb.hidden_size)
    with torch.no_grad():
        assert torch.equal(head(feats, feats)["embedding"], head2(feats, feats)["embedding"])
        assert torch.equal(head(feats, feats)["scales"], head2(feats, feats)["scales"])
        enc = bb.encode(["hi"], [" there"])
        assert torch.allclose(bb(**enc), bb2(**bb2.encode(["hi"], [" there"])), atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        from prefalign.rewards.model import load_pal
        load_pal(folder)
