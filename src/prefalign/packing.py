"""Padding-free packing of a micro-batch's rows, optionally with each prompt computed once.

A padded batch [N, T] spends compute on padding (about half of it on preference data) and runs
every response's prompt through the model again. A packed batch puts the rows' tokens into R rows
of at most `capacity` tokens (first-fit, longest first) with position ids restarting per sequence
and attention confined to each sequence. With `share_prompt`, rows that start with the same
prompt (the K responses of an example, its reference sample, the prompt-NLL row) become one
"unit": the prompt once, then each response's own tokens, whose position ids continue from the
prompt's end and which see the prompt and themselves only (a tree-shaped causal mask). A causal
LM's hidden state at a position depends only on the tokens and positions before it, so every
row's states are the same as in its padded row, and gradients add up over the rows that share
a state exactly as they do over the copies (Wang et al., prefix sharing for DPO, arXiv:2410.20305).

The rest of the code keeps reading the padded [N, T] grid: `where` maps each padded position to
the packed position that computes it, so only the model's forward changes (logps.response_forward).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

# Model types whose decoders take position ids and use a given 4D mask as it is (transformers'
# masking_utils), with rotary positions and no sliding window by default: packing is exact there.
PACKING_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo2", "phi3", "smollm3")
# attention implementations that honour a 4D boolean / additive mask (a tree or block-diagonal one)
MASK_ATTENTION = ("sdpa", "eager")
# varlen flash attention reads sequence boundaries from restarting position ids: packing, no tree
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


@dataclass
class PackOptions:
    """How collate packs rows: `capacity` tokens per packed row (the run's max_length; a longer row
    gets a row of its own length), and whether rows with the same prompt share one copy of it."""

    capacity: int
    share_prompt: bool = True


@dataclass
class Packed:
    """R packed rows of length L holding the N padded rows [N, T] of a batch.

    input_ids, position_ids: [R, L]. seq: [R, L] the sequence piece each position belongs to
    (a prompt or a response tail; every padding position a piece of its own). unit: [R, L] the
    prompt group; in_prompt: [R, L] True on a shared prompt's positions. A position q may attend
    to k <= q of the same piece, or of the same unit's prompt. where: [N * T] the flat packed
    position (r * L + l) that computes padded position (n, t); 0 at padding (never read).
    tokens: positions holding a token; slots: R * L.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    seq: torch.Tensor
    unit: torch.Tensor
    in_prompt: torch.Tensor
    where: torch.Tensor
    tokens: int
    slots: int
    shared: bool

    def to(self, device):
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def mask(self) -> torch.Tensor:
        """[R, 1, L, L] bool, True where query position q may attend to key position k."""
        length = self.seq.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.seq.device).tril()
        same_piece = self.seq[:, :, None] == self.seq[:, None, :]
        prompt_of_unit = (self.unit[:, :, None] == self.unit[:, None, :]) & self.in_prompt[:, None, :]
        return (causal & (same_piece | prompt_of_unit))[:, None]


def prompt_units(rows: list[tuple[list[int], int]], share_prompt: bool) -> list[tuple[int, list[int]]]:
    """(shared prefix length P, member row indices) per unit; P = 0 where nothing is shared.

    Prompts are the rows' ids before their response start; a row joins the longest prompt that
    its ids begin with (so the prompt-NLL row, whose "response" starts at 0, joins its prompt).
    """
    if not share_prompt:
        return [(0, [r]) for r in range(len(rows))]
    prompts = {tuple(ids[:start]) for ids, start in rows if start > 0}
    lengths = sorted({len(p) for p in prompts}, reverse=True)
    groups: dict[tuple, list[int]] = {}
    units = []
    for r, (ids, _) in enumerate(rows):
        key = next((k for n in lengths if n <= len(ids) and (k := tuple(ids[:n])) in prompts), None)
        if key is None:
            units.append((0, [r]))
        else:
            groups.setdefault(key, []).append(r)
    return units + [(len(key), members) for key, members in groups.items()]


def split_unit(prefix: int, members: list[int], rows, capacity: int) -> list[tuple[int, list[int], int]]:
    """A unit cut into pieces that fit `capacity` (each with its own prompt copy): (P, members, length).
    Identical rows in a unit (same prompt, same tail) are computed once."""
    out, current, length, seen = [], [], prefix, set()
    for r in members:
        tail = tuple(rows[r][0][prefix:])
        if tail in seen:
            current.append(r)  # placed with its twin below
            continue
        if current and length + len(tail) > capacity:
            out.append((prefix, current, length))
            current, length, seen = [], prefix, set()
        seen.add(tail)
        current.append(r)
        length += len(tail)
    out.append((prefix, current, length))
    return out


def first_fit(pieces: list[tuple[int, list[int], int]], capacity: int) -> list[list]:
    """[fill, pieces] per packed row: each piece (longest first) into the first row it fits."""
    bins: list[list] = []
    for piece in sorted(pieces, key=lambda p: -p[2]):
        target = next((b for b in bins if b[0] + piece[2] <= capacity), None)
        if target is None:
            target = [0, []]
            bins.append(target)
        target[0] += piece[2]
        target[1].append(piece)
    return bins


def pack_rows(rows: list[tuple[list[int], int]], t_max: int, pad_id: int, options: PackOptions,
              pad_multiple: int = 1) -> Packed:
    """Pack (ids, response start) rows; `t_max` is the padded batch's row length T (for `where`).

    A shared-prompt unit may fill up to twice `capacity` (a prompt and two full-length responses
    share one row); a longer unit is cut, each piece with its own prompt copy. Every packed row
    has the longest row's length, so the row length is chosen among a few (from `capacity` or the
    longest piece up to twice `capacity`) to compute the fewest positions: rows of nearly
    max_length leave first-fit at max_length nothing to combine."""
    longest = max(len(ids) for ids, _ in rows)
    pieces = [p for prefix, members in prompt_units(rows, options.share_prompt)
              for p in split_unit(prefix, members, rows, max(2 * options.capacity, longest))]
    smallest = max(options.capacity, max(p[2] for p in pieces))
    plans = [first_fit(pieces, c) for c in sorted({smallest, *(max(smallest, options.capacity * f // 4)
                                                                for f in (5, 6, 8))})]
    bins = min(plans, key=lambda b: (len(b) * max(f for f, _ in b), max(f for f, _ in b)))
    length = -(-max(b[0] for b in bins) // pad_multiple) * pad_multiple
    n_bins = len(bins)
    input_ids = torch.full((n_bins, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_bins, length), dtype=torch.long)
    # padding positions: each its own piece and unit (it attends to itself only: no empty softmax row)
    seq = -1 - torch.arange(n_bins * length).view(n_bins, length)
    unit = seq.clone()
    in_prompt = torch.zeros((n_bins, length), dtype=torch.bool)
    where = torch.zeros(len(rows) * t_max, dtype=torch.long)
    n_piece = n_unit = 0
    for r_bin, (fill, placed) in enumerate(bins):
        at = 0
        for prefix, members, _ in placed:
            base = r_bin * length
            if prefix:
                input_ids[r_bin, at:at + prefix] = torch.tensor(rows[members[0]][0][:prefix])
                position_ids[r_bin, at:at + prefix] = torch.arange(prefix)
                seq[r_bin, at:at + prefix], in_prompt[r_bin, at:at + prefix] = n_piece, True
                n_piece += 1
            prompt_at, at = at, at + prefix
            tails: dict[tuple, int] = {}
            for r in members:
                ids = rows[r][0]
                tail = tuple(ids[prefix:])
                if tail not in tails:
                    tails[tail] = at
                    input_ids[r_bin, at:at + len(tail)] = torch.tensor(tail, dtype=torch.long)
                    position_ids[r_bin, at:at + len(tail)] = torch.arange(prefix, len(ids))
                    seq[r_bin, at:at + len(tail)] = n_piece
                    n_piece += 1
                    at += len(tail)
                start = tails[tail]
                where[r * t_max: r * t_max + len(ids)] = base + torch.cat(
                    [torch.arange(prompt_at, prompt_at + prefix), torch.arange(start, start + len(tail))])
            unit[r_bin, prompt_at:at] = n_unit
            n_unit += 1
        assert at == fill, "packed row filled to a different length than planned"
    tokens = sum(b[0] for b in bins)
    return Packed(input_ids, position_ids, seq, unit, in_prompt, where, tokens, n_bins * length,
                  options.share_prompt)


def attention_kind(model) -> str:
    """'mask' (a 4D mask is honoured), 'varlen' (flash attention: position ids only) or '' (unsupported)."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if getattr(config, "model_type", None) not in PACKING_MODEL_TYPES or getattr(config, "sliding_window", None) \
            and getattr(config, "use_sliding_window", True) is not False:
        return ""
    if impl in MASK_ATTENTION:
        return "mask"
    return "varlen" if impl in VARLEN_ATTENTION else ""


def why_unsupported(model, share_prompt: bool) -> str:
    """'' when `model` can run packed rows (with shared prompts if asked), else the reason."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    impl = getattr(config, "_attn_implementation", None)
    if model_type not in PACKING_MODEL_TYPES:
        return (f"model type {model_type!r} is not one where packed rows are known to be exact (supported: "
                f"{', '.join(PACKING_MODEL_TYPES)})")
    kind = attention_kind(model)
    if not kind:
        if getattr(config, "sliding_window", None):
            return "the model uses sliding-window attention, which a packed row's mask would replace"
        return f"attention implementation {impl!r} cannot confine attention to each sequence (use sdpa or eager)"
    if kind == "varlen" and share_prompt:
        return f"{impl} takes sequence boundaries only, not a shared prompt's tree mask (set share_prompt: false)"
    return ""


def model_inputs(model, packed: Packed) -> dict:
    """The decoder's keyword inputs for a packed batch under the model's attention implementation."""
    kind = attention_kind(model)
    inputs = {"input_ids": packed.input_ids, "position_ids": packed.position_ids}
    if kind == "varlen" and not packed.shared:
        return inputs  # transformers finds the sequences from the restarting position ids
    if kind != "mask":
        raise ValueError(f"packed rows: {why_unsupported(model, packed.shared)}")
    mask = packed.mask()
    if getattr(model.config, "_attn_implementation", None) == "eager":
        # eager attention adds the mask to the scores: 0 where allowed, the dtype's lowest value elsewhere
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    inputs["attention_mask"] = mask
    return inputs


def choose_packing(models: list, packing: str, share_prompt: str, capacity: int) -> PackOptions | None:
    """The run's PackOptions from the config's `packing` and `share_prompt` (auto | true | false) and
    the models that read the batches (policy, live reference): auto packs and shares where all of
    them support it; true refuses, naming the reason, a model that does not."""
    if packing == "false":
        return None
    for share in (False, True):
        reasons = [r for m in models if (r := why_unsupported(m, share))]
        forced = packing == "true" if not share else share_prompt == "true"
        if reasons and forced:
            key = "packing" if not share else "share_prompt"
            raise ValueError(f"{key}: true, but {reasons[0]}; set {key}: false (or auto)")
        if reasons and not share:
            return None  # auto: this model trains on padded rows
        if share and (reasons or share_prompt == "false"):
            return PackOptions(capacity, share_prompt=False)
    return PackOptions(capacity, share_prompt=True)
