"""The lean SwiGLU MLP: the same outputs and gradients as the model's own MLP, two [T, I] tensors
fewer kept for backward, and the plain forward wherever the lean one could differ."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prefalign.models.lean_mlp import SwiGLUDown, install_lean_mlp


def mlp_of(kind: str, hidden: int = 8, inter: int = 24, act: str = "silu"):
    import transformers as tf

    configs = {"llama": (tf.LlamaConfig, "llama", "LlamaMLP"), "mistral": (tf.MistralConfig, "mistral", "MistralMLP"),
               "qwen2": (tf.Qwen2Config, "qwen2", "Qwen2MLP"), "qwen3": (tf.Qwen3Config, "qwen3", "Qwen3MLP")}
    config_cls, module, name = configs[kind]
    config = config_cls(hidden_size=hidden, intermediate_size=inter, hidden_act=act, num_attention_heads=2,
                        num_key_value_heads=2, num_hidden_layers=1, vocab_size=16)
    modeling = __import__(f"transformers.models.{module}.modeling_{module}", fromlist=[name])
    torch.manual_seed(0)
    return getattr(modeling, name)(config)


def grads(mlp, x):
    x = x.clone().requires_grad_(True)
    out = mlp(x)
    # an arbitrary upstream gradient, so that no term of the backward is trivially zero
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in mlp.named_parameters()}


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3"])
def test_same_outputs_and_gradients_as_the_models_own_mlp(kind):
    plain = mlp_of(kind).double()
    lean = copy.deepcopy(plain)
    assert install_lean_mlp(lean) == 1
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    out_p, gx_p, gw_p = grads(plain, x)
    out_l, gx_l, gw_l = grads(lean, x)
    torch.testing.assert_close(out_l, out_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx_l, gx_p, rtol=0, atol=1e-12)
    assert gw_l.keys() == gw_p.keys() == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}
    for name in gw_p:
        torch.testing.assert_close(gw_l[name], gw_p[name], rtol=0, atol=1e-12)


def test_backward_against_finite_differences():
    torch.manual_seed(1)
    gate = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLUDown.apply, (gate, up, weight))


def test_hand_computed_value_and_gradient():
    """One token, I = 2, one output: y = w1 silu(g1) u1 + w2 silu(g2) u2."""
    g = torch.tensor([[0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([[2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.5, -0.5]], dtype=torch.float64, requires_grad=True)
    y = SwiGLUDown.apply(g, u, w)
    sig = [1 / (1 + math.exp(-v)) for v in (0.5, -1.0)]
    silu = [v * s for v, s in zip((0.5, -1.0), sig)]
    assert y.item() == pytest.approx(1.5 * silu[0] * 2.0 - 0.5 * silu[1] * 3.0, abs=1e-12)
    y.sum().backward()
    dsilu = [s * (1 + v * (1 - s)) for v, s in zip((0.5, -1.0), sig)]  # silu'(v) = s (1 + v (1 - s))
    assert g.grad.tolist()[0] == pytest.approx([1.5 * 2.0 * dsilu[0], -0.5 * 3.0 * dsilu[1]], abs=1e-12)
    assert u.grad.tolist()[0] == pytest.approx([1.5 * silu[0], -0.5 * silu[1]], abs=1e-12)
    assert w.grad.tolist()[0] == pytest.approx([silu[0] * 2.0, silu[1] * 3.0], abs=1e-12)


def saved_bytes(module, x) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward (shared storage once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def test_keeps_two_intermediate_tensors_fewer():
    plain = mlp_of("llama", hidden=8, inter=24)
    lean = copy.deepcopy(plain)
    install_lean_mlp(lean)
    x = torch.randn(3, 7, 8, requires_grad=True)
    tokens_by_inter = 3 * 7 * 24 * 4  # one [T, I] float32 tensor
    assert saved_bytes(plain, x) - saved_bytes(lean, x) == 2 * tokens_by_inter


def test_plain_forward_where_the_lean_one_could_differ():
    lean = mlp_of("llama")
    install_lean_mlp(lean)
    x = torch.randn(2, 3, 8, requires_grad=True)
    assert type(lean(x).grad_fn).__name__ == "SwiGLUDownBackward"
    with torch.no_grad():  # nothing to keep: the plain forward
        assert lean(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(lean(x).grad_fn).__name__ != "SwiGLUDownBackward"
    handle = lean.down_proj.register_forward_pre_hook(lambda m, a: None)  # e.g. ZeRO-3's weight gathering
    assert type(lean(x).grad_fn).__name__ != "SwiGLUDownBackward"
    handle.remove()
    assert type(lean(x).grad_fn).__name__ == "SwiGLUDownBackward"


def lora_pair(tiny_model_dir, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    from prefalign.models.causal_lm import load_model

    config = dict(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(0)
    plain = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(**config))
    lean_base = load_model(str(tiny_model_dir))
    assert install_lean_mlp(lean_base) == 2
    lean = get_peft_model(lean_base, LoraConfig(**config))
    lean.load_state_dict(plain.state_dict())
    with torch.no_grad():  # B starts at zero, which would hide every term through it: give it values
        for (name, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
                q.copy_(p)
    return plain, lean


def test_lora_down_proj_same_gradients_and_less_kept(tiny_model_dir):
    plain, lean = lora_pair(tiny_model_dir)
    ids = torch.randint(0, 100, (2, 9))
    out_p, out_l = plain(input_ids=ids).logits, lean(input_ids=ids).logits
    assert any(type(f).__name__ == "SwiGLUDownLoRABackward" for f in walk(out_l.grad_fn))
    torch.testing.assert_close(out_l, out_p, rtol=0, atol=1e-6)
    out_p.log_softmax(-1)[..., 7].sum().backward()
    out_l.log_softmax(-1)[..., 7].sum().backward()
    trained = 0
    for (name, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
        if p.requires_grad:
            trained += "down_proj" in name
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert trained == 4  # A and B of both layers' down_proj
    mlp_p = plain.base_model.model.model.layers[0].mlp
    mlp_l = lean.base_model.model.model.layers[0].mlp
    x = torch.randn(3, 7, 32, requires_grad=True)
    # the plain LoRA MLP keeps four [T, I] tensors (the product once, shared by the base layer and A)
    assert saved_bytes(mlp_p, x) - saved_bytes(mlp_l, x) == 2 * 3 * 7 * 64 * 4


def test_lora_backward_against_finite_differences():
    from prefalign.models.lean_mlp import SwiGLUDownLoRA

    torch.manual_seed(2)
    args = [torch.randn(*shape, dtype=torch.float64, requires_grad=True)
            for shape in ((2, 3, 6), (2, 3, 6), (5, 6), (2, 6), (5, 2))]
    assert torch.autograd.gradcheck(lambda g, u, w, a, b: SwiGLUDownLoRA.apply(g, u, w, a, b, 1.7), args)


def test_lora_with_dropout_or_switched_off_keeps_peft_forward(tiny_model_dir):
    _, lean = lora_pair(tiny_model_dir, dropout=0.1)
    ids = torch.randint(0, 100, (2, 9))
    names = {type(f).__name__ for f in walk(lean(input_ids=ids).logits.grad_fn)}
    assert not names & {"SwiGLUDownLoRABackward", "SwiGLUDownBackward"}
    _, lean = lora_pair(tiny_model_dir)
    with lean.disable_adapter():  # the adapter-off reference with gradients on: the base layer alone
        names = {type(f).__name__ for f in walk(lean(input_ids=ids).logits.grad_fn)}
    assert "SwiGLUDownLoRABackward" not in names


def test_whole_model_logits_and_gradients_match(tiny_model_dir):
    from prefalign.models.causal_lm import load_model

    plain = load_model(str(tiny_model_dir))
    lean = copy.deepcopy(plain)
    assert install_lean_mlp(lean) == 2
    ids = torch.randint(0, 100, (2, 11))
    out_p = plain(input_ids=ids).logits
    out_l = lean(input_ids=ids).logits
    torch.testing.assert_close(out_l, out_p, rtol=0, atol=1e-6)
    out_p.log_softmax(-1)[..., 5].sum().backward()
    out_l.log_softmax(-1)[..., 5].sum().backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # a copy of a lean model runs its own weights, not the original's
    twin = copy.deepcopy(lean)
    with torch.no_grad():
        twin.model.layers[0].mlp.down_proj.weight.zero_()
    assert not torch.allclose(twin(input_ids=ids).logits, out_l)


def test_other_activations_are_left_alone():
    assert install_lean_mlp(mlp_of("llama", act="gelu")) == 0


def test_config_switch_reaches_the_policy(tiny_model_dir):
    from prefalign.config import TrainConfig
    from prefalign.losses import get_objective
    from prefalign.models.causal_lm import load_model
    from prefalign.recipes.policy import setup_policy

    for on in (True, False):
        cfg = TrainConfig(model=str(tiny_model_dir), lean_mlp=on)
        policy = setup_policy(cfg, get_objective("dpo"), load_model(str(tiny_model_dir)))
        mlp = policy.model.model.layers[0].mlp
        assert ("forward" in vars(mlp)) is on


def test_under_gradient_checkpointing_the_gradients_match(tiny_model_dir):
    from prefalign.models.causal_lm import load_model

    plain = load_model(str(tiny_model_dir))
    lean = load_model(str(tiny_model_dir), gradient_checkpointing=True)
    assert install_lean_mlp(lean) == 2
    plain.train(), lean.train()  # checkpointing recomputes only in training mode
    ids = torch.randint(0, 100, (2, 11))
    plain(input_ids=ids).logits.log_softmax(-1)[..., 3].sum().backward()
    out = lean(input_ids=ids).logits
    # non-reentrant checkpointing keeps the graph's nodes (it drops what they save): the lean node is there
    assert any(type(f).__name__ == "SwiGLUDownBackward" for f in walk(out.grad_fn))
    assert lean.is_activation_checkpointing
    out.log_softmax(-1)[..., 3].sum().backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def walk(fn, seen=None):
    """Every node of an autograd graph reachable from fn."""
    seen = set() if seen is None else seen
    stack = [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(next_fn for next_fn, _ in node.next_functions)
