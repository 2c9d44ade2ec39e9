"""SparsePO's activation masks (objective `sparsepo_act`): token weights from reference activations.

Christopoulou et al., arXiv:2410.05102, following the authors' release (huawei-noah/HEBO,
SparsePO, MAPOTrainer with activation_hook="all", activation_mapping="zn_rescale"). During one
no-grad forward of the reference model, forward hooks reduce every hooked activation to its
mean over features, a [N, T] map per activation:
  mlp     each layer's MLP activation (the input of its output projection, act(gate) * up)
  attn    each layer's q, k, v projections, q and k after the rotary embedding, and the attention
          output before o_proj (heads flattened): 6 per layer
  resid   each layer's residual stream: the layer input, after input_layernorm, the attention
          output, after the attention residual add, after post_attention_layernorm, the MLP
          output, the layer output (7 per layer); plus the embeddings and the final-norm output
  logits  the output head's logits
Each map is taken at the positions that predict response tokens and min-max rescaled to [0, 1]
over them, per sequence. The maps are averaged within each of the four groups, and the mask is
the mean of the four group means (the release's order of averaging, which weighs the single
logits map as much as all residual maps together). The release z-normalises each map before the
rescale; a min-max rescale is invariant to x -> a x + b with a > 0, so that step cannot change
the result and is skipped. Where a sequence's map is constant (e.g. one response token), the
release divides by zero; here that map is 1 on every response token (no information: no masking).

The hooks rely on the Llama decoder layout (q/k/v/o_proj, gate/up/down_proj, input_layernorm,
post_attention_layernorm, the modeling module's apply_rotary_pos_emb); other architectures name
or order these differently, so they are refused rather than hooked wrongly.
"""

from __future__ import annotations

import sys

import torch

# Model types whose decoder layer, attention and MLP run exactly the Llama computation above.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
GROUPS = ("mlp", "attn", "resid", "logits")


def check_supported(model) -> None:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"activation masks (sparsepo_act) hook the Llama layout, supported for model types "
                         f"{SUPPORTED_MODEL_TYPES}; this model is {model_type!r}")
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError("activation masks need the mean logit as a linear map of the final hidden state; "
                         "final_logit_softcapping makes it non-linear")


def feature_mean(x) -> torch.Tensor:
    """[N, T] mean over every feature dimension of a [N, T, ...] activation (a tuple: its first item)."""
    x = x[0] if isinstance(x, tuple) else x
    return x.detach().float().flatten(2).mean(-1)


class ActivationRecorder:
    """Context manager: hooks `model` (HF causal LM, or a PEFT wrapper of one) and records the maps."""

    def __init__(self, model):
        check_supported(model)
        self.model = model
        self.maps: dict[str, list[torch.Tensor]] = {g: [] for g in GROUPS}
        self.handles = []

    def output(self, module, group: str):
        self.handles.append(module.register_forward_hook(
            lambda _m, _args, out: self.maps[group].append(feature_mean(out))))

    def input(self, module, group: str):
        self.handles.append(module.register_forward_pre_hook(
            lambda _m, args: self.maps[group].append(feature_mean(args[0]))))

    def rotated(self, attn, proj, rotary, rope: dict):
        """q or k after the rotary embedding, from its projection's output and the layer's cos/sin."""
        def hook(_m, _args, out):
            n, t = out.shape[:2]
            heads = out.view(n, t, -1, attn.head_dim).transpose(1, 2)
            cos, sin = rope["cos_sin"]
            # apply_rotary_pos_emb rotates a (q, k) pair the same way; pass this one as both
            self.maps["attn"].append(feature_mean(rotary(heads, heads, cos, sin)[0].transpose(1, 2)))
        self.handles.append(proj.register_forward_hook(hook))

    def __enter__(self):
        decoder = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        self.output(decoder.embed_tokens, "resid")
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
            rope: dict = {}

            def keep_rope(_m, _args, kwargs, rope=rope):
                rope["cos_sin"] = kwargs["position_embeddings"]
            self.handles.append(attn.register_forward_pre_hook(keep_rope, with_kwargs=True))
            self.input(layer.input_layernorm, "resid")            # layer input
            self.output(layer.input_layernorm, "resid")
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                self.output(proj, "attn")
            self.rotated(attn, attn.q_proj, rotary, rope)
            self.rotated(attn, attn.k_proj, rotary, rope)
            self.input(attn.o_proj, "attn")                        # heads merged, before o_proj
            self.output(attn, "resid")                             # attention's residual delta
            self.input(layer.post_attention_layernorm, "resid")    # after the attention residual add
            self.output(layer.post_attention_layernorm, "resid")
            self.input(mlp.down_proj, "mlp")                       # act(gate) * up
            self.output(mlp, "resid")                              # MLP's residual delta
            self.output(layer, "resid")                            # layer output

        def final_norm(_m, _args, out):
            self.maps["resid"].append(feature_mean(out))
            # mean over V of h @ W.T + b is h @ mean(W) + mean(b): no [N, T, V] logits needed
            mean_logit = out.detach().float() @ head.weight.detach().float().mean(0)
            if head.bias is not None:
                mean_logit = mean_logit + head.bias.detach().float().mean()
            self.maps["logits"].append(mean_logit)
        self.handles.append(decoder.norm.register_forward_hook(final_norm))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def mask(self, target_mask: torch.Tensor) -> torch.Tensor:
        """[N, T] activation mask: the recipe above at the positions of target_mask [N, T - 1]."""
        counts = {g: len(v) for g, v in self.maps.items()}
        if not all(counts.values()):
            raise RuntimeError(f"activation hooks recorded nothing for some groups: {counts}")
        groups = [torch.stack([rescale(m[:, :-1], target_mask) for m in self.maps[g]]).mean(0) for g in GROUPS]
        out = torch.zeros(target_mask.shape[0], target_mask.shape[1] + 1, device=target_mask.device)
        out[:, 1:] = torch.stack(groups).mean(0).masked_fill(~target_mask, 0.0)
        return out


def rescale(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Min-max rescale each row of values [N, S] to [0, 1] over its True positions of mask; 1 where a
    row is constant there; 0 off the mask."""
    lo = values.masked_fill(~mask, float("inf")).amin(1, keepdim=True)
    hi = values.masked_fill(~mask, float("-inf")).amax(1, keepdim=True)
    span = hi - lo
    varies = span > 0
    scaled = (values - lo) / torch.where(varies, span, torch.ones_like(span))
    return torch.where(varies, scaled.clamp(0.0, 1.0), torch.ones_like(scaled)).masked_fill(~mask, 0.0)
