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
- down_proj is neither a plain bias-free nn.Linear nor a peft LoRA Linear over one (one active
  adapter, no dropout, not merged, no DoRA), or it has hooks (DeepSpeed ZeRO-3 gathers weights in
  them, SparsePO's activation masks read its input).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# transformers' MLP classes whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x))
SWIGLU_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")


def gate_up_grads(ctx, grad_product, gate, up, act):
    """Gradients of product = silu(gate) * up with respect to gate and up (None where not wanted)."""
    grad_gate = torch.ops.aten.silu_backward(grad_product * up, gate) if ctx.needs_input_grad[0] else None
    grad_up = grad_product * act if ctx.needs_input_grad[1] else None
    return grad_gate, grad_up


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
        return (*gate_up_grads(ctx, grad_product, gate, up, act), grad_weight)


class SwiGLUDownLoRA(torch.autograd.Function):
    """The same with a LoRA down_proj: p @ weight.T + scaling * (p @ lora_a.T) @ lora_b.T, p = silu(gate) * up.

    LoRA's A matrix would keep p for its own gradient; here only gate, up and the small [T, r]
    p @ lora_a.T are kept, and p is recomputed in backward."""

    @staticmethod
    def forward(ctx, gate, up, weight, lora_a, lora_b, scaling: float):
        product = F.silu(gate).mul_(up)
        down_a = F.linear(product, lora_a)  # [..., r]
        ctx.save_for_backward(gate, up, weight, lora_a, lora_b, down_a)
        ctx.scaling = scaling
        return F.linear(product, weight) + F.linear(down_a, lora_b) * scaling

    @staticmethod
    def backward(ctx, grad_out):
        gate, up, weight, lora_a, lora_b, down_a = ctx.saved_tensors
        act = F.silu(gate)
        product = act * up
        flat_out = grad_out.reshape(-1, grad_out.shape[-1])
        grad_down_a = (grad_out @ lora_b) * ctx.scaling  # [..., r]
        grad_product = grad_out @ weight + grad_down_a @ lora_a
        flat_product = product.reshape(-1, product.shape[-1])
        grad_weight = flat_out.T @ flat_product if ctx.needs_input_grad[2] else None
        grad_a = grad_down_a.reshape(-1, grad_down_a.shape[-1]).T @ flat_product if ctx.needs_input_grad[3] else None
        grad_b = (flat_out.T @ down_a.reshape(-1, down_a.shape[-1])) * ctx.scaling if ctx.needs_input_grad[4] else None
        return (*gate_up_grads(ctx, grad_product, gate, up, act), grad_weight, grad_a, grad_b, None)


def is_silu(act) -> bool:
    from transformers.activations import SiLUActivation

    return isinstance(act, (torch.nn.SiLU, SiLUActivation))


def autocast_on() -> bool:
    return any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))


def plain_linear(module) -> bool:
    """A bias-free nn.Linear (not a subclass: quantised layers are) whose call nothing hooks."""
    return (type(module) is torch.nn.Linear and module.bias is None and not module._forward_hooks
            and not module._forward_pre_hooks)


def lora_parts(down):
    """(base weight, A, B, scaling) of a peft LoRA Linear with one plain active adapter, else None."""
    if type(down).__name__ != "Linear" or not type(down).__module__.startswith("peft.tuners.lora"):
        return None
    names = list(down.active_adapters)
    if (down.disable_adapters or down.merged or len(names) != 1 or names[0] not in down.lora_A
            or names[0] in getattr(down, "lora_variant", {}) or down._forward_hooks or down._forward_pre_hooks):
        return None  # merged, switched off, several adapters, DoRA and other variants: peft's own forward
    name = names[0]
    base, lora_a, lora_b = down.base_layer, down.lora_A[name], down.lora_B[name]
    if not (plain_linear(base) and plain_linear(lora_a) and plain_linear(lora_b)
            and type(down.lora_dropout[name]) is torch.nn.Identity
            and lora_a.weight.dtype == base.weight.dtype):
        return None  # dropout, a bias, a dtype cast: peft's own forward
    return base.weight, lora_a.weight, lora_b.weight, float(down.scaling[name])


def lean_forward(self, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and not autocast_on():
        if plain_linear(self.down_proj):
            return SwiGLUDown.apply(self.gate_proj(x), self.up_proj(x), self.down_proj.weight)
        lora = lora_parts(self.down_proj)
        if lora is not None:
            return SwiGLUDownLoRA.apply(self.gate_proj(x), self.up_proj(x), *lora)
    return type(self).forward(self, x)  # the class's own forward


def install_lean_mlp(model: torch.nn.Module) -> int:
    """Give every SwiGLU MLP of `model` the lean forward (an attribute of the instance: the class and
    other models are untouched); returns how many MLPs now have it (0: none of this kind)."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in SWIGLU_CLASSES and is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(lean_forward, module)
            count += 1
    return count
