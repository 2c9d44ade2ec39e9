import math

import pytest
import torch

from prefalign.judges import make_judge
from prefalign.judges.principle import PrincipleJudge, judge_prompt, load_principles


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from prefalign.models.causal_lm import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def next_logp(model, tokenizer, context_text: str, word: str) -> float:
    """Independent: a plain forward, log_softmax, the log-prob of the word's tokens after the context."""
    ctx = tokenizer(context_text, add_special_tokens=True)["input_ids"]
    cont = tokenizer(word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
    return sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


def test_preference_equals_the_salmon_formula_computed_independently(tiny):
    model, tok = tiny
    principles = ["Be correct.", "Be brief."]
    judge = PrincipleJudge(model=model, tokenizer=tok, principles=principles, chat=False)
    q, a, b = "What is 2+2?", "4", "It is five, I am sure."

    def logit(first, second):
        text = judge_prompt(principles, q, first, second) + "\nAnswer: Output ("
        return next_logp(model, tok, text, "a") - next_logp(model, tok, text, "b")

    z = (logit(a, b) - logit(b, a)) / 2
    assert judge.compare([q], [a], [b])[0] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-5)


def test_both_orders_make_it_skew_symmetric_and_score_is_refused(tiny_model_dir):
    judge = make_judge("principle", path=str(tiny_model_dir))
    p = judge.compare(["Q?", "Q?"], ["yes", "no"], ["no", "yes"])
    assert p[0] + p[1] == pytest.approx(1.0, abs=1e-6)
    assert judge.stats.verdicts == 2
    with pytest.raises(NotImplementedError, match="compares pairs only"):
        judge.score(["Q?"], ["yes"])


def test_principles_from_a_file_and_errors(tmp_path):
    path = tmp_path / "principles.txt"
    path.write_text("Be kind.\n\n Be exact. \n")
    assert load_principles(str(path)) == ["Be kind.", "Be exact."]
    assert len(load_principles(None)) >= 3
    with pytest.raises(ValueError, match="at least one principle"):
        load_principles([])
    with pytest.raises(FileNotFoundError, match="principles file"):
        load_principles(str(tmp_path / "missing.txt"))
