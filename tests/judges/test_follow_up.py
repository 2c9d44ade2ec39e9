import pytest
import torch

from prefalign.judges import make_judge
from prefalign.judges.follow_up import FollowUpJudge, split_follow_up


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from prefalign.models.causal_lm import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def follow_up_logp(model, tokenizer, text_before: str, follow_up: str, specials: bool, per_token: bool) -> float:
    """Independent check: one plain forward over the concatenated ids, log_softmax, pick the follow-up's tokens."""
    ctx = tokenizer(text_before, add_special_tokens=specials)["input_ids"]
    cont = tokenizer(follow_up, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    picked = [logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont)]
    return sum(picked) / len(picked) if per_token else sum(picked)


@pytest.mark.parametrize("per_token", [True, False])
def test_flr_equals_an_independent_forward_plain_format(tiny, per_token):
    model, tok = tiny
    pos, neg = ["Thanks, great answer.", "Perfect."], ["That is wrong."]
    judge = FollowUpJudge(model=model, tokenizer=tok, positive=pos, negative=neg, chat=False, per_token=per_token,
                          batch_size=2)
    prompts, responses = ["How do I boil an egg?", "Hi"], ["Put it in boiling water for nine minutes.", "Hello!"]
    got = judge.score(prompts, responses)
    for g, x, y in zip(got, prompts, responses):
        before = f"\n\nHuman: {x}\n\nAssistant: {y}\n\nHuman:"
        lp = [follow_up_logp(model, tok, before, " " + f, True, per_token) for f in pos]
        ln = [follow_up_logp(model, tok, before, " " + f, True, per_token) for f in neg]
        assert g == pytest.approx(sum(lp) / 2 - ln[0], abs=1e-4)
    assert judge.stats.verdicts == 2


def test_flr_chat_template_scores_the_follow_up_as_the_next_user_turn(tiny):
    model, tok = tiny
    ctx, cont, rendered = split_follow_up(tok, "Q?", "A.", "Thanks.", chat=True)
    assert rendered and ctx.startswith("<|bos|>") and ctx.endswith("A.<|endoftext|>\nHuman:") and cont == " Thanks."
    judge = FollowUpJudge(model=model, tokenizer=tok, positive=["Thanks."], negative=["Wrong."])
    expected = (follow_up_logp(model, tok, ctx, " Thanks.", False, True)
                - follow_up_logp(model, tok, ctx, " Wrong.", False, True))
    assert judge.score(["Q?"], ["A."])[0] == pytest.approx(expected, abs=1e-4)


def test_flr_builds_by_name_from_a_folder_and_compares(tiny_model_dir):
    judge = make_judge("follow_up", path=str(tiny_model_dir))
    p = judge.compare(["Q?", "Q?"], ["A.", "B."], ["B.", "A."])
    assert p[0] + p[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one positive"):
        FollowUpJudge(path=str(tiny_model_dir), positive=[])
