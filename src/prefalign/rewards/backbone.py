"""A HF backbone (local folder or Hub id) (encoder or decoder) that turns (prompt, response) into one pooled vector.

Encoders (BERT-like, e.g. all-MiniLM-L6-v2) read "[CLS] prompt [SEP] response [SEP]" and pool by
the masked mean of the last hidden states, as sentence encoders are trained; decoders read
"prompt response EOS" and pool the last real token, the only one that has seen everything.
Long inputs keep the end of the prompt (the turn being answered) and the start of the response.
Heads (rewards/heads.py and friends) map the pooled [N, H] vectors to rewards or embeddings.
"""

from __future__ import annotations


import torch

from prefalign.models.encoders import mean_pool
from prefalign.models.hub import resolve_model


def is_decoder(config) -> bool:
    return bool(getattr(config, "is_decoder", False)) or any(
        a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))


def render(text) -> str:
    """A chat message list as plain role-tagged text (the backbone need not have a chat template)."""
    if isinstance(text, str):
        return text
    return "\n".join(f"{m['role']}: {m['content']}" for m in text)


def special_frame(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """The special tokens a tokenizer puts before, between and after a text pair ([CLS] / [SEP] / [SEP]
    for BERT, BOS / - / - for Llama), read off by encoding a probe pair, so that truncation can
    work on token ids (transformers 5 no longer exposes build_inputs_with_special_tokens)."""
    a = tokenizer("x", add_special_tokens=False)["input_ids"]
    b = tokenizer("y", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", "y", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(a) + 1):
        if full[i:i + len(a)] == a:
            for j in range(i + len(a), len(full) - len(b) + 1):
                if full[j:j + len(b)] == b:
                    return full[:i], full[i + len(a):j], full[j + len(b):]
    raise ValueError(f"cannot locate a text pair inside the tokenizer's special-token framing: {full}")


class RewardBackbone(torch.nn.Module):
    def __init__(self, path: str, max_length: int = 512, max_response_length: int | None = None,
                 decoder: bool | None = None, revision: str | None = None, trust_remote_code: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        # a local folder, or a Hub id (pinned by revision) through the HF cache; remote code only on request
        folder, self.commit = resolve_model(path, revision, trust_remote_code)
        trust = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        config = AutoConfig.from_pretrained(folder, **trust)
        # a saved reward model says so itself: AutoModel writes a bare LlamaModel whose config no
        # longer names a "ForCausalLM" architecture, and mean pooling would silently replace last-token
        self.decoder = is_decoder(config) if decoder is None else bool(decoder)
        # AutoModel gives the bare transformer (no LM head) for encoders and decoders alike
        self.model = AutoModel.from_pretrained(folder, use_safetensors=True, **trust)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **trust)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # encode() truncates on token ids itself; the tokenizer's length warning would only mislead
        self.tokenizer.model_max_length = 1 << 30
        self.path = path
        self.hidden_size = self.model.config.hidden_size
        self.max_length = max_length
        self.max_response_length = max_response_length or max_length // 2
        self.frame = special_frame(self.tokenizer)

    def encode(self, prompts: list, responses: list) -> dict[str, torch.Tensor]:
        """Token ids [N, T] (right-padded) and attention mask for aligned prompts and responses."""
        tok = self.tokenizer
        rows = []
        for p, r in zip(prompts, responses):
            p_ids = tok(render(p), add_special_tokens=False)["input_ids"]
            r_ids = tok(render(r), add_special_tokens=False)["input_ids"][:self.max_response_length]
            if self.decoder and tok.eos_token_id is not None:
                r_ids = r_ids + [tok.eos_token_id]
            head, middle, tail = self.frame
            room = max(self.max_length - len(r_ids) - len(head) - len(middle) - len(tail), 0)
            p_ids = p_ids[len(p_ids) - room:] if room else []
            rows.append(head + p_ids + middle + r_ids + tail)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N, T, H] last hidden states (for step-level heads that read several positions)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.decoder:
            last = attention_mask.sum(1) - 1  # right padding: the last real token
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N, H] one pooled vector per (prompt, response)."""
        return self.pool(self.hidden_states(input_ids, attention_mask), attention_mask)

    @torch.no_grad()
    def embed(self, prompts: list, responses: list, batch_size: int = 64) -> torch.Tensor:
        """[N, H] pooled vectors of aligned prompts and responses, batch_size rows at a time, without
        gradients: frozen features for heads trained on top (the GPM and PAL reproductions)."""
        return torch.cat([self(**self.encode(prompts[s:s + batch_size], responses[s:s + batch_size]))
                          for s in range(0, len(responses), batch_size)])
