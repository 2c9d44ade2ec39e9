"""A reward model = a backbone + the head of one registered kind; its training step, scoring and files.

Saved folder (written whole, then renamed into place):
  backbone/            save_pretrained (safetensors) + tokenizer
  head.safetensors     the head's weights and buffers
  reward_model.json    {"kind": ..., "head": {constructor params}, "loss": {...},
                        "backbone": {"decoder", "max_length", "max_response_length"}}
Every kind (bt, multi_objective, pearl, prm, gpm, pal) saves and loads through this one format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prefalign.rewards.backbone import RewardBackbone, render
from prefalign.rewards.heads import get_reward_kind
from prefalign.rewards.steps import encode_steps, split_steps

CONFIG_FILE = "reward_model.json"


def win_share(p: torch.Tensor) -> torch.Tensor:
    """1 when P(chosen > rejected) > 0.5, 0.5 on a tie, else 0 (an untrained model scores 0.5)."""
    return (p > 0.5).float() + 0.5 * (p == 0.5).float()


def split_pairs(out: dict, b: int) -> tuple[dict, dict]:
    """Per-response outputs of 2B rows (chosen rows first) -> chosen and rejected halves."""
    first = {k: v[:b] for k, v in out.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (2 * b,)}
    second = {k: v[b:] for k, v in out.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (2 * b,)}
    return first, second


class RewardModel(torch.nn.Module):
    def __init__(self, backbone: RewardBackbone, kind: str, head_params: dict | None = None,
                 loss_params: dict | None = None):
        super().__init__()
        self.kind = get_reward_kind(kind)
        self.backbone = backbone
        self.head_params = dict(head_params or {})
        self.head = self.kind.head(backbone.hidden_size, **self.head_params)
        self.loss_params = dict(loss_params or {})

    def encode(self, prompts: list, responses: list, users: list | None = None) -> dict:
        """Token ids for (prompt, response) rows, plus what the head's `inputs` ask for: the distinct
        prompts alone (prompt_input_ids + prompt_index per row) and user indices (PAL)."""
        if self.head.reads == "tokens":
            steps = [split_steps(render(r), self.head.delimiter) for r in responses]
            return encode_steps(self.backbone, prompts, steps, self.head.delimiter)
        enc = self.backbone.encode(prompts, responses)
        if "prompt_features" in self.head.inputs:
            # each distinct prompt passes the backbone once (a pair batch holds every prompt twice)
            keys = [render(p) for p in prompts]
            distinct = list(dict.fromkeys(keys))
            alone = self.backbone.encode(distinct, [""] * len(distinct))
            enc["prompt_input_ids"], enc["prompt_attention_mask"] = alone["input_ids"], alone["attention_mask"]
            enc["prompt_index"] = torch.tensor([distinct.index(k) for k in keys], dtype=torch.long)
        if "user" in self.head.inputs:
            if users is None:
                raise ValueError(f"a {self.kind.name!r} reward model scores for a user: pass users= (one per row)")
            enc["user"] = self.head.user_indices(users)
        return enc

    def outputs(self, enc: dict) -> dict:
        """The head's per-response outputs for encoded rows."""
        if self.head.reads == "tokens":
            hidden = self.backbone.hidden_states(enc["input_ids"], enc["attention_mask"])
            return self.head(hidden, enc["step_row"], enc["step_pos"], enc["input_ids"].shape[0])
        extra = {}
        if "prompt_features" in self.head.inputs:
            alone = self.backbone(enc["prompt_input_ids"], enc["prompt_attention_mask"])
            extra["prompt_features"] = alone[enc["prompt_index"]]
        if "user" in self.head.inputs:
            extra["user"] = enc["user"]
        return self.head(self.backbone(enc["input_ids"], enc["attention_mask"]), **extra)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """One micro-batch (rewards/data.py builds it) -> per-example losses [B] and metric sums."""
        out = self.outputs(batch)
        if self.kind.data == "pairs":
            b = batch["input_ids"].shape[0] // 2
            out_c, out_r = split_pairs(out, b)
            per = self.kind.loss(out_c, out_r, batch, **self.loss_params)
            p = self.head.probability(out_c, out_r).detach().float()
            metrics = {"loss": (per.detach().float().sum(), float(b)), "rewards/accuracy": (win_share(p).sum(), float(b))}
            if self.head.scalar:  # a GPM has no scalar reward: loss and accuracy only
                rc, rr = self.head.reward(out_c).detach().float(), self.head.reward(out_r).detach().float()
                metrics.update({"rewards/margins": ((rc - rr).sum(), float(b)), "rewards/chosen": (rc.sum(), float(b)),
                                "rewards/rejected": (rr.sum(), float(b))})
            return per, metrics
        per = self.kind.loss(out, batch, **self.loss_params)
        n = float(per.shape[0])
        metrics = {"loss": (per.detach().float().sum(), n)}
        if self.kind.data == "ratings":
            err = (out["attributes"].detach() - batch["ratings"]).abs() * batch["rating_mask"]
            for j, name in enumerate(self.head.attributes):
                metrics[f"attributes/{name}_mae"] = (err[:, j].sum(), batch["rating_mask"][:, j].sum())
        else:
            right = ((out["step_logits"].detach() > 0).float() == batch["step_labels"].float()).float()
            metrics["steps/accuracy"] = (right.sum(), float(right.numel()))
            metrics["steps/dropped"] = (torch.tensor(float(batch["n_dropped"])), n)
        return per, metrics

    @torch.no_grad()
    def score_outputs(self, prompts: list, responses: list, batch_size: int = 16, users: list | None = None) -> list[dict]:
        """Head outputs per chunk of `batch_size` responses (eval mode, no gradients)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        chunks = []
        for s in range(0, len(responses), batch_size):
            enc = self.encode(prompts[s:s + batch_size], responses[s:s + batch_size],
                              None if users is None else users[s:s + batch_size])
            enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
            chunks.append({k: v.float() for k, v in self.outputs(enc).items()
                           if isinstance(v, torch.Tensor) and k not in ("features", "step_row", "step_logits")})
        self.train(was_training)
        return chunks

    def rewards(self, prompts: list, responses: list, direction=None, batch_size: int = 16,
                users: list | None = None) -> torch.Tensor:
        """[N] one scalar reward per response (multi-objective: v . r for `direction`; PAL: r_u for `users`)."""
        if not self.head.scalar:
            raise ValueError(f"a {self.kind.name!r} model has no scalar reward per response; use probabilities()")
        if direction is not None and not hasattr(self.head, "attributes"):
            raise ValueError(f"a direction applies to multi-objective reward models; this one is {self.kind.name!r}")
        chunks = self.score_outputs(prompts, responses, batch_size, users)
        if not chunks:
            return torch.zeros(0)
        return torch.cat([self.head.reward(c, direction) if direction is not None else self.head.reward(c)
                          for c in chunks]).cpu()

    def probabilities(self, prompts: list, a: list, b: list, direction=None, batch_size: int = 16,
                      users: list | None = None) -> torch.Tensor:
        """[N] P(a preferred over b) under the model's own link (BT sigmoid, PEARL's Gaussian, GPM's
        skew-symmetric form, PAL's per-user BT)."""
        if direction is not None:  # a direction turns attribute scores into one BT reward
            return torch.sigmoid(self.rewards(prompts, a, direction, batch_size) - self.rewards(prompts, b, direction,
                                                                                                batch_size))
        out_a = self.score_outputs(prompts, a, batch_size, users)
        out_b = self.score_outputs(prompts, b, batch_size, users)
        if not out_a:
            return torch.zeros(0)
        return torch.cat([self.head.probability(x, y) for x, y in zip(out_a, out_b)]).cpu()

    def config(self) -> dict:
        return {"kind": self.kind.name, "head": self.head_params, "loss": self.loss_params,
                "backbone": {"decoder": self.backbone.decoder, "max_length": self.backbone.max_length,
                             "max_response_length": self.backbone.max_response_length}}

    def save_pretrained(self, folder, safe_serialization: bool = True) -> None:
        """Write the three parts into `folder` (callers make it atomic: checkpoint.py, save_reward_model)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.model.save_pretrained(folder / "backbone", safe_serialization=True)
        self.backbone.tokenizer.save_pretrained(folder / "backbone")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                  str(folder / "head.safetensors"))
        (folder / CONFIG_FILE).write_text(json.dumps(self.config(), indent=1))

    def restore_weights(self, folder) -> None:
        """Load saved weights in place (the optimizer keeps pointing at the same tensors)."""
        folder = Path(folder)
        state = {}
        for name in sorted((folder / "backbone").glob("*.safetensors")):
            state.update(load_file(str(name)))
        self.backbone.model.load_state_dict(state, strict=True)
        self.head.load_state_dict(load_file(str(folder / "head.safetensors")), strict=True)


def save_reward_model(model: RewardModel, folder, card: str | None = None) -> Path:
    """The model (and its card, README.md, when given) written to a temporary folder, then renamed."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if card is not None:
        (tmp / "README.md").write_text(card, encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def adopt_head(backbone: RewardBackbone, kind: str, head: torch.nn.Module, params: dict) -> RewardModel:
    """A RewardModel around a head built outside train-rm (its weights copied; params rebuild it)."""
    model = RewardModel(backbone, kind, params)
    model.head.load_state_dict(head.state_dict(), strict=True)
    return model


def load_reward_model(folder, device: str | torch.device = "cpu", kind: str | None = None) -> RewardModel:
    """Load any saved reward model; `kind` (optional) checks that the folder holds that kind."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved reward model: {CONFIG_FILE} is missing")
    cfg = json.loads(path.read_text())
    for key in ("kind", "head", "backbone"):
        if key not in cfg:
            raise ValueError(f"{path}: missing key {key!r}")
    if kind is not None and cfg["kind"] != kind:
        raise ValueError(f"{path}: kind is {cfg['kind']!r}, expected {kind!r}")
    backbone = RewardBackbone(str(folder / "backbone"), **cfg["backbone"])
    model = RewardModel(backbone, cfg["kind"], cfg["head"], cfg.get("loss"))
    model.head.load_state_dict(load_file(str(folder / "head.safetensors")), strict=True)
    return model.to(device).eval()


# ---- heads built outside train-rm (GPM, PAL) saved in this format ----
# They live here, not in gpm.py / pal.py, because this module imports the heads through the
# kind registry: save/load beside the heads would make an import circle.

def save_gpm(folder, head, backbone: RewardBackbone) -> Path:
    """Save a GPM head (rewards.gpm.GPMHead) + backbone built outside train-rm."""
    return save_reward_model(adopt_head(backbone, "gpm", head, head.params), folder)


def load_gpm(folder, device: str = "cpu"):
    """(head, backbone) of a saved GPM (any folder load_reward_model reads, checked to be kind gpm)."""
    model = load_reward_model(folder, device, kind="gpm")
    return model.head, model.backbone


def save_pal(folder, head, backbone: RewardBackbone, users: list[str] | None = None) -> Path:
    """Save a PAL head (rewards.pal.PALHead) + backbone built outside train-rm; `users` (optional)
    renames the head's users."""
    params = dict(head.params)
    if users is not None:
        params["users"] = [str(u) for u in users]
    return save_reward_model(adopt_head(backbone, "pal", head, params), folder)


def load_pal(folder, device: str = "cpu"):
    """(head, backbone, users) of a saved PAL model (load_reward_model, checked to be kind pal)."""
    model = load_reward_model(folder, device, kind="pal")
    return model.head, model.backbone, model.head.users
