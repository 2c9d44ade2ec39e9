"""OFS-DPO and COFS-DPO (Qi et al., "Online DPO: Online Direct Preference Optimization with Fast-Slow
Chasing", arXiv 2406.05534): two LoRA modules on one base model, trained on the same pairs at two
speeds, with a regulariser that keeps the fast one ahead of the slow one; COFS combines the fast
modules of successive domains linearly.

The fast module is peft's first adapter ("default"): it is the policy that samples, is evaluated
and is saved at the root of every policy folder; the slow module is a second adapter ("slow"),
started equal to the fast one and saved in the folder's slow/ subfolder (peft's layout). One
step runs the batch through each adapter (two forwards) and minimises
    objective(fast) + objective(slow) + online.ofs_chase * chase_regulariser(fast, slow)
with the fast module at learning_rate and the slow one at learning_rate / online.ofs_lr_ratio.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prefalign.losses.online import chase_regulariser
from prefalign.train.step import forward_batch, run_objective
from prefalign.train.trainee import PolicyTrainee

FAST, SLOW = "default", "slow"


def adapter_params(model, adapter: str) -> dict[str, torch.nn.Parameter]:
    """An adapter's LoRA parameters keyed by their name with the adapter's name taken out, so the
    fast and the slow module's dictionaries share keys."""
    tag = f".{adapter}."
    return {name.replace(tag, "."): p for name, p in model.named_parameters() if "lora_" in name and tag in name}


def add_slow_module(model) -> None:
    """The slow LoRA module beside the fast one: the same configuration, the same starting weights
    ("two identical modules"), and trainable (peft creates an added adapter frozen)."""
    if FAST not in getattr(model, "peft_config", {}):
        raise ValueError("OFS-DPO needs the policy's LoRA adapter (lora=true)")
    model.add_adapter(SLOW, model.peft_config[FAST])
    fast, slow = adapter_params(model, FAST), adapter_params(model, SLOW)
    if set(fast) != set(slow) or not fast:
        raise ValueError("the slow LoRA module does not mirror the fast one")
    with torch.no_grad():
        for name, p in slow.items():
            p.copy_(fast[name])
            p.requires_grad_(True)


@contextmanager
def active_adapter(model, adapter: str):
    """Forward through `adapter` only. peft's set_adapter would also freeze the other adapter's
    parameters, which must keep their gradients from the forward already taken."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [m._active_adapter for m in layers]
    for m in layers:
        m._active_adapter = adapter
    try:
        yield
    finally:
        for m, name in zip(layers, before):
            m._active_adapter = name


def param_groups(model, learning_rate: float, lr_ratio: float) -> list[dict]:
    """The optimizer's two groups: the fast module at learning_rate, the slow one lr_ratio times slower."""
    return [{"params": list(adapter_params(model, FAST).values()), "lr": learning_rate},
            {"params": list(adapter_params(model, SLOW).values()), "lr": learning_rate / lr_ratio}]


class FastSlowTrainee(PolicyTrainee):
    """PolicyTrainee over the fast and the slow module (see the module docstring)."""

    def __init__(self, *args, chase: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.chase = chase

    @property
    def peft_model(self):
        return self.accelerator.unwrap_model(self.module).model

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        fast_seq = forward_batch(self.module, batch, self.reference, self.objective)
        with active_adapter(self.peft_model, SLOW):
            slow_seq = forward_batch(self.module, batch, self.reference, self.objective)
        fast, metrics = run_objective(self.objective, fast_seq, self.params)
        slow, _ = run_objective(self.objective, slow_seq, self.params)
        reg = chase_regulariser(fast_seq, slow_seq, float(self.params.get("beta", 0.1)))
        per_example = fast.per_example + slow.per_example + self.chase * reg
        n = float(fast_seq.batch_size)
        # "loss" is what is minimised; the reward metrics stay the fast module's (the policy's)
        metrics.update({"loss": (per_example.detach().float().sum(), n),
                        "ofs/fast_loss": (fast.per_example.detach().float().sum(), n),
                        "ofs/slow_loss": (slow.per_example.detach().float().sum(), n),
                        "ofs/chase": (reg.detach().float().sum(), n)})
        return per_example, metrics

    def save(self, folder: Path) -> None:
        super().save(folder)  # peft writes every adapter: the fast one at the root, the slow one in slow/
        if not (Path(folder) / SLOW / "adapter_model.safetensors").exists():
            raise RuntimeError(f"{folder}: the slow LoRA module was not written")

    def load(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict

        super().load(folder)
        path = Path(folder) / SLOW / "adapter_model.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: an OFS-DPO policy folder holds the slow module there")
        set_peft_model_state_dict(self.peft_model, load_file(str(path)), adapter_name=SLOW)


def save_fast_module(model, path: Path) -> None:
    """The fast module's weights alone (keys without the adapter name), written atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter_params(model, FAST).items()}, str(tmp))
    tmp.replace(path)


@torch.no_grad()
def combine_fast_modules(model, modules: list[dict[str, torch.Tensor]], weights: list[float]) -> None:
    """COFS-DPO: the fast module becomes sum_d w_d * fast_d over the domains' fast modules, w
    renormalised to sum to 1. The combination is of the LoRA parameters (A and B of each layer), as
    the paper combines "fast modules parameters"; the weight change B A of the combination is not
    the combination of the domains' B A."""
    total = sum(float(w) for w in weights)
    if len(modules) != len(weights) or total <= 0:
        raise ValueError(f"combine_fast_modules needs one weight per module with a positive sum: {len(modules)} "
                         f"modules, weights {weights}")
    for name, p in adapter_params(model, FAST).items():
        p.copy_(sum((float(w) / total) * m[name].to(p.device, p.dtype) for w, m in zip(weights, modules)))


def domain_of(cfg, r: int) -> int:
    """Which domain round r trains on: the rounds are split evenly, data.train's first."""
    return r // (cfg.online.rounds // (1 + len(cfg.online.domains)))


def domain_end(cfg, model, round_dir, r: int) -> None:
    """COFS-DPO, after the last round of each domain: that domain's fast module is kept on disk
    (round_dir(r)/domain_fast.safetensors), and from the second domain on the fast module becomes the
    weighted combination of all kept so far (online.cofs_weights, the first ones; uniform if unset)."""
    o = cfg.online

    def last_of_domain(q: int) -> bool:
        return q + 1 == o.rounds or domain_of(cfg, q + 1) != domain_of(cfg, q)

    if o.method != "cofs_dpo" or not last_of_domain(r):
        return
    save_fast_module(model, round_dir(r) / "domain_fast.safetensors")
    ends = [q for q in range(r + 1) if last_of_domain(q)]
    if len(ends) > 1:
        weights = [float(w) for w in o.cofs_weights[:len(ends)]] or [1.0] * len(ends)
        combine_fast_modules(model, [load_file(str(round_dir(q) / "domain_fast.safetensors")) for q in ends], weights)
