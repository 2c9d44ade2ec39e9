"""SwiGLU MLPs that keep two of their four [tokens, intermediate] activations for backward.

A Llama-style MLP computes down(silu(gate(x)) * up(x)). Left to autograd, each layer keeps four
[T, I] tensors until backward: gate(x) and up(x) (for the product and for silu's derivative),
silu(gate(x)) (for the product's derivative) and the product (the input down_proj keeps for its
weight's gradient). Here the last two are recomputed in backward from the first two: two
elementwise ops per layer, against 2 I floats per token and layer not kept. On SmolLM2-135M
(I = 1536 of ~11k floats a token keeps per layer) that is about a third of the activation memory.
The gradients are the same computation in the same order; only where the intermediate values
live changes. Liger Kernel's fused SwiGLU does the same on GPUs (Hsu et al., arXiv:2410.10989).

Only the MLP classes whose forward is exactly that expression are changed, and at each call the
plain forward runs instead whenever the lean one could differ or save nothing:
- no gradient is wanted (a reference, evaluation, generation): nothing to keep;
- autocast is on: the plain modules follow autocast's casting rules, this function would not;
- down_proj is not a plain bias-free nn.Linear (a LoRA layer, a quantised layer) or has hooks
  (DeepSpeed ZeRO-3 gathers weights in them, SparsePO's activation masks read its input).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# transformers' MLP classes whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x))
SWIGLU_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")


class SwiGLUDown(torch.autograd.Function):
    """down(silu(gate) * up) = (silu(gate) * up) @ weight.T, keeping gate and up only."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up, weight)
        return F.linear(F.silu(gate).mul_(up), weight)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        gate, up, weight = ctx.saved_tensors
        act = F.silu(gate)
        grad_product = grad_out @ weight  # [..., I]
        grad_weight = None
        if ctx.needs_input_grad[2]:
            product = act * up
            grad_weight = grad_out.reshape(-1, grad_out.shape[-1]).T @ product.reshape(-1, product.shape[-1])
        grad_up = grad_product * act if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad_product * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up, grad_weight


def is_silu(act) -> bool:
    from transformers.activations import SiLUActivation

    return isinstance(act, (torch.nn.SiLU, SiLUActivation))


def autocast_on() -> bool:
    return any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))


def lean_call_possible(mlp) -> bool:
    down = mlp.down_proj
    return (torch.is_grad_enabled() and not autocast_on() and type(down) is torch.nn.Linear and down.bias is None
            and not down._forward_hooks and not down._forward_pre_hooks)


def lean_forward(self, x: torch.Tensor) -> torch.Tensor:
    if not lean_call_possible(self):
        return type(self).forward(self, x)  # the class's own forward
    return SwiGLUDown.apply(self.gate_proj(x), self.up_proj(x), self.down_proj.weight)


def install_lean_mlp(model: torch.nn.Module) -> int:
    """Give every SwiGLU MLP of `model` the lean forward (an attribute of the instance: the class and
    other models are untouched); returns how many MLPs now have it (0: none of this kind)."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in SWIGLU_CLASSES and is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(lean_forward, module)
            count += 1
    return count
