"""LongAlign's reweighted text-image score: a reward-side utility, not a pairwise objective.

Liu et al., "Improving Long-Text Alignment for Text-to-Image Diffusion Models" (LongAlign),
arXiv:2410.11817. A CLIP-style reward <t, f> between a normalised text embedding t and image
embedding f mixes a text-irrelevant part (the direction v shared by all prompts) with the part
that depends on the prompt; reward fine-tuning against it over-fits the shared part. LongAlign
scales the component of t along v by the weight w (the release's REWEIGHT, default 0.3):
    v = normalise(mean over the batch of t),   t' = t - (1 - w) (t . v) v,   score = <t', f>.
w = 1 is the plain cosine score; w = 0 removes the shared direction. The release
(luping-liu/LongAlign, loss.py dense_score, unet_reward.py) gathers v over all devices and
trains the UNet on 0.5 (1 - mean score) minus a constant; `reward_loss` keeps the part with a
gradient. Use it with any embedding pair (a CLIP model, or the reward models of this package).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shared_direction(text_embeddings: torch.Tensor) -> torch.Tensor:
    """v: the normalised mean of the batch's normalised text embeddings [B, D] -> [D]."""
    return F.normalize(F.normalize(text_embeddings, dim=-1).mean(0), dim=0)


def reweighted_score(text_embeddings: torch.Tensor, image_embeddings: torch.Tensor, weight: float = 0.3,
                     direction: torch.Tensor | None = None) -> torch.Tensor:
    """[B] scores <t - (1 - weight)(t . v) v, f> of normalised embeddings [B, D]; `direction` v
    defaults to the batch's shared_direction (pass one gathered over a larger set to fix it)."""
    if text_embeddings.shape != image_embeddings.shape:
        raise ValueError(f"text {tuple(text_embeddings.shape)} and image {tuple(image_embeddings.shape)} "
                         "embeddings must have one shape [B, D]")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight is the share of the text-irrelevant component kept, in [0, 1]; got {weight}")
    t, f = F.normalize(text_embeddings, dim=-1), F.normalize(image_embeddings, dim=-1)
    v = shared_direction(text_embeddings) if direction is None else F.normalize(direction, dim=0)
    t = t - (1.0 - weight) * (t @ v)[:, None] * v
    return (t * f).sum(-1)


def reward_loss(scores: torch.Tensor) -> torch.Tensor:
    """The release's reward-backpropagation loss 0.5 (1 - mean score), without its constant."""
    return 0.5 * (1.0 - scores.mean())
