import pytest
import torch

from prefalign.judges import make_judge
from prefalign.judges.preference_model import PALJudge, PreferenceModelJudge
from prefalign.rewards.backbone import RewardBackbone
from prefalign.rewards.gpm import GPMHead
from prefalign.rewards.model import save_gpm, save_pal
from prefalign.rewards.pal import PALHead

PROMPTS = ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: how are you?\n\nAssistant:", "\n\nHuman: hi\n\nAssistant:"]
A = [" hello there", " fine thanks", " hello there"]
B = [" go away", " I am a bit tired today", " hey"]


@pytest.fixture(scope="module")
def gpm_dir(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    bb = RewardBackbone(str(tiny_model_dir), max_length=32)
    return save_gpm(tmp_path_factory.mktemp("gpm") / "model", GPMHead(bb.hidden_size, k=2, gate=True), bb)


@pytest.fixture(scope="module")
def pal_dir(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    bb = RewardBackbone(str(tiny_model_dir), max_length=32)
    head = PALHead(bb.hidden_size, n_users=2, n_prototypes=2, dim=4, mode="B")
    with torch.no_grad():
        head.user_logits.copy_(torch.tensor([[2.0, -2.0], [-2.0, 2.0]]))
    return save_pal(tmp_path_factory.mktemp("pal") / "model", head, bb, users=["ann", "bo"])


def test_gpm_judge_is_skew_symmetric_and_does_not_score(gpm_dir):
    judge = PreferenceModelJudge(str(gpm_dir), batch_size=2)
    p_ab, p_ba = judge.compare(PROMPTS, A, B), judge.compare(PROMPTS, B, A)
    assert len(p_ab) == 3 and all(0.0 < p < 1.0 for p in p_ab)
    assert all(x + y == pytest.approx(1.0, abs=1e-6) for x, y in zip(p_ab, p_ba))
    assert judge.compare(PROMPTS, A, A) == [0.5, 0.5, 0.5]
    assert judge.stats.verdicts == 9
    with pytest.raises(NotImplementedError, match="compares pairs only"):
        judge.score(PROMPTS, A)
    # batching and de-duplication change nothing: the same pair alone gives the same probability
    alone = PreferenceModelJudge(str(gpm_dir), batch_size=16).compare(PROMPTS[1:2], A[1:2], B[1:2])
    assert alone[0] == pytest.approx(p_ab[1], abs=1e-5)
    assert judge.compare([], [], []) == []


def test_registered_by_name(gpm_dir):
    judge = make_judge("preference_model", path=str(gpm_dir))
    assert isinstance(judge, PreferenceModelJudge)


def test_pal_judge_scores_per_user_and_fits_unseen_users(pal_dir):
    ann = PALJudge(str(pal_dir), user="ann")
    bo = PALJudge(str(pal_dir), user="bo")
    s_ann, s_bo = ann.score(PROMPTS, A), bo.score(PROMPTS, A)
    assert all(s <= 0 for s in s_ann) and s_ann != s_bo  # negative squared distances, per user
    p = ann.compare(PROMPTS, A, B)
    s_b = ann.score(PROMPTS, B)
    assert p == pytest.approx([1 / (1 + torch.exp(torch.tensor(y - x))).item() for x, y in zip(s_ann, s_b)], abs=1e-6)
    new = PALJudge(str(pal_dir), weights=[0.5, 0.5])
    w = new.fit_user(PROMPTS, A, B, steps=50)
    assert sum(w) == pytest.approx(1.0, abs=1e-6) and len(w) == 2
    # the fit moves the weights towards whatever makes A preferred: P(A > B) cannot drop
    assert sum(new.compare(PROMPTS, A, B)) >= sum(PALJudge(str(pal_dir), weights=[0.5, 0.5]).compare(PROMPTS, A, B)) - 1e-6


def test_pal_judge_rejects_bad_users(pal_dir):
    with pytest.raises(ValueError, match="not one of"):
        PALJudge(str(pal_dir), user="carol")
    with pytest.raises(ValueError, match="summing to 1"):
        PALJudge(str(pal_dir), weights=[0.9, 0.9])
    with pytest.raises(ValueError, match="one user"):
        PALJudge(str(pal_dir))


def test_each_distinct_response_is_embedded_once(gpm_dir):
    """Linear query cost: every distinct (prompt, response) is embedded once, whichever side it is on."""
    judge = PreferenceModelJudge(str(gpm_dir), batch_size=16)
    seen = []
    encode = judge.features.backbone.encode
    judge.features.backbone.encode = lambda p, r: (seen.append(len(r)), encode(p, r))[1]
    judge.compare(PROMPTS, A, B)
    assert seen == [5, 2]  # A's 3 rows hold 2 distinct ones, plus B's 3; then the 2 distinct prompts
    seen.clear()
    judge.compare(PROMPTS, A, [A[1], A[0], A[1]])  # the same texts swapped: 4 distinct (prompt, response)
    assert seen == [4, 2]
