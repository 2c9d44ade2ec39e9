"""The diffusion family: its surrogate is minus the denoising error at one (t, eps) shared by the
pair and by the reference, recomputed here from the DDPM formula; Diffusion-DPO through
FamilyTrainee equals the authors' loss on those errors, gradient included; `prefalign train`
with family: diffusion trains, checkpoints and resumes; bad data is named by row and field."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from prefalign.families.base import FamilyTrainee, families_for, get_family
from prefalign.families.diffusion import DiffusionFamily, read_pairs, write_pairs
from prefalign.losses import get_objective

diffusers = pytest.importorskip("diffusers")


class Unwrap:
    def unwrap_model(self, m):
        return m


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))


def pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.rand(n, 1, 8, 8, generator=g) * 2 - 1


def test_the_surrogate_is_minus_the_ddpm_denoising_error_with_one_draw_per_pair():
    scheduler = diffusers.DDPMScheduler()
    fam, unet = DiffusionFamily(scheduler), tiny_unet()
    chosen, rejected = pairs(3)
    write_examples = [type("E", (), {"images": torch.stack([c, r]), "class_label": None})() for c, r in
                      zip(chosen, rejected)]
    batch = fam.make_batch(write_examples, [0, 1, 2], "train")
    scores = fam.score(unet, batch, generator_seed=123)
    # the same draw, made here from the seed: t [B] then eps [B, 1, C, H, W]
    gen = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (3,), generator=gen)
    eps = torch.randn(3, 1, 1, 8, 8, generator=gen)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's default linear schedule
    abar = torch.cumprod(1 - betas, 0).float()
    with torch.no_grad():
        for b in range(3):
            for k, x0 in enumerate((chosen[b], rejected[b])):
                x_t = math.sqrt(abar[t[b]]) * x0 + math.sqrt(1 - abar[t[b]]) * eps[b, 0]
                pred = unet(x_t[None], t[b:b + 1]).sample[0]
                assert scores[b, k].item() == pytest.approx(-(pred - eps[b, 0]).pow(2).mean().item(), rel=1e-4)
    assert fam.score(unet, batch, 123).tolist() == scores.tolist()  # the seed fixes the draw
    assert fam.score(unet, batch, 124).tolist() != scores.tolist()


def test_diffusion_dpo_through_the_family_trainee_is_the_authors_loss_with_gradient():
    scheduler = diffusers.DDPMScheduler()
    fam, policy = DiffusionFamily(scheduler), tiny_unet(0)
    reference = tiny_unet(1).requires_grad_(False)
    chosen, rejected = pairs(4, seed=1)
    examples = [type("E", (), {"images": torch.stack([c, r]), "class_label": None})() for c, r in zip(chosen, rejected)]
    beta = 500.0
    trainee = FamilyTrainee(Unwrap(), fam, policy, reference, get_objective("diffusion_dpo"), {"beta": beta})
    torch.manual_seed(9)
    per_example, metrics = trainee.loss(fam.make_batch(examples, [0, 1, 2, 3], "train"))
    per_example.sum().backward()
    got = {n: p.grad.clone() for n, p in policy.named_parameters()}
    # the same seed the trainee drew, then the release's arithmetic on raw MSEs (model_diff, ref_diff)
    torch.manual_seed(9)
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    policy.zero_grad()
    x_t, t, eps = fam.noisy_inputs(torch.stack([e.images for e in examples]), seed)
    mse = (policy(x_t, t).sample - eps).pow(2).mean(dim=[1, 2, 3]).view(4, 2)
    with torch.no_grad():
        ref_mse = (reference(x_t, t).sample - eps).pow(2).mean(dim=[1, 2, 3]).view(4, 2)
    model_diff, ref_diff = mse[:, 0] - mse[:, 1], ref_mse[:, 0] - ref_mse[:, 1]
    expected = -torch.nn.functional.logsigmoid(-0.5 * beta * (model_diff - ref_diff))
    assert per_example.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    expected.sum().backward()
    for n, p in policy.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-7), n


def test_identical_policy_and_reference_give_zero_logratio_at_the_shared_draw():
    fam, policy = DiffusionFamily(diffusers.DDPMScheduler()), tiny_unet()
    reference = copy.deepcopy(policy)
    chosen, rejected = pairs(2)
    examples = [type("E", (), {"images": torch.stack([c, r]), "class_label": None})() for c, r in zip(chosen, rejected)]
    trainee = FamilyTrainee(Unwrap(), fam, policy, reference, get_objective("diffusion_dpo"), {"beta": 5000.0})
    per_example, _ = trainee.loss(fam.make_batch(examples, [0, 1], "train"))
    assert per_example.tolist() == pytest.approx([math.log(2)] * 2, rel=1e-6)


def test_sampling_with_one_seed_is_reproducible_and_in_range():
    fam = DiffusionFamily(diffusers.DDPMScheduler(), inference_steps=5)
    unet = tiny_unet()
    a, b = fam.sample(unet, 3, seed=4), fam.sample(unet, 3, seed=4)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(a, fam.sample(unet, 3, seed=5))


def test_pairs_file_errors_name_the_row_and_field(tmp_path):
    chosen, rejected = pairs(3)
    rejected[2, 0, 1, 1] = 3.0
    path = write_pairs(tmp_path / "bad.safetensors", chosen, rejected)
    with pytest.raises(ValueError, match=r"row 2, field rejected"):
        read_pairs(path)
    ok = write_pairs(tmp_path / "ok.safetensors", chosen, chosen, torch.tensor([1, 2, 3]))
    assert [e.class_label for e in read_pairs(ok)] == [1, 2, 3]


def test_registry_and_objectives_column():
    assert get_family("diffusion") is DiffusionFamily and get_family("causal_lm").name == "causal_lm"
    # other registered families (trajectory, recommender) may train it too: the two that must are named
    assert {"causal_lm", "diffusion"} <= set(families_for(get_objective("diffusion_dpo")))
    assert "diffusion" not in families_for(get_objective("kto"))  # unpaired: not a pair of images
    assert "diffusion" not in families_for(get_objective("simpo"))  # needs response lengths
    with pytest.raises(ValueError, match="unknown family"):
        get_family("nope")


def write_model(folder):
    fam = DiffusionFamily(diffusers.DDPMScheduler(num_train_timesteps=100))
    fam.save(tiny_unet(), folder)
    return folder


def test_prefalign_train_family_diffusion_trains_checkpoints_and_resumes(tmp_path):
    from prefalign.cli.main import main

    model = write_model(tmp_path / "base")
    chosen, rejected = pairs(12)
    data = write_pairs(tmp_path / "pairs.safetensors", chosen, rejected)
    args = ["train", "family=diffusion", f"model={model}", f"data.train={data}", "objective=diffusion_dpo",
            "beta=1000", "batch_size=4", "learning_rate=1e-3", "save_steps=2", "progress=false", "seed=3",
            "lr_scheduler=constant", "warmup_ratio=0",
            "data.eval_fraction=0.25"]
    # the uninterrupted run also evaluates every step: evaluation draws a fixed seed, so it neither
    # depends on nor disturbs the training draws, and its weights must equal the cut-and-resumed run's
    assert main(args + [f"output_dir={tmp_path / 'full'}", "max_steps=4", "eval_steps=1"]) == 0
    assert main(args + [f"output_dir={tmp_path / 'cut'}", "max_steps=2"]) == 0
    assert main(args + [f"output_dir={tmp_path / 'cut'}", "max_steps=4", "resume=true"]) == 0
    from safetensors.torch import load_file

    full = load_file(str(tmp_path / "full" / "final" / "diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "final" / "diffusion_pytorch_model.safetensors"))
    start = load_file(str(model / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(full[k], start[k]) for k in full)  # it trained
    for k in full:  # exact resume: the noise draws replay from the loop's restored RNG
        assert torch.equal(full[k], resumed[k]), k
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["family"] == "diffusion" and summary["steps"] == 4 and "rewards/accuracy" in str(summary["eval_end"])
    assert (tmp_path / "full" / "final" / "scheduler_config.json").is_file()


def test_lm_only_options_are_refused_for_another_family(tmp_path):
    from prefalign.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="lora apply to family: causal_lm only"):
        load_config(None, ["family=diffusion", "model=m", "data.train=d", "lora=true"])
    with pytest.raises(ConfigError, match="unknown family"):
        load_config(None, ["family=vae", "model=m", "data.train=d"])
