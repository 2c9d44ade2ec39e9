"""Preference records: one prompt with K responses and a target, validated row by row.

Every format becomes an `Example`. Pairs are K = 2 with target [1, 0]; ranked lists keep all
responses with scores (higher is better); unpaired rows are K = 1 with a 0/1 label.
A bad row raises `DataError` naming file, row and field, or, when the caller asked to skip bad
rows, is counted in `LoadReport.skipped` by reason. Nothing is dropped silently.

Pairs come in TRL's four shapes (text or chat messages, with or without a `prompt` field) and
in the shape whose `chosen`/`rejected` conversations repeat the given prompt as leading turns
(HuggingFaceH4/ultrafeedback_binarized). All of them become the same Example: the prompt, then
responses that hold only what follows it (see split_shared_text / split_shared_messages).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Union

Messages = list[dict[str, str]]
Text = Union[str, Messages]

HH_ASSISTANT = "\n\nAssistant:"

# Per-example statistics an objective may need that come with the data itself (row fields of
# these names): iREPO's empirical preference, MODPO's other-reward margins, PoFT's aligned-model
# scores. "scalar" fields are one number, "vector" fields a list of numbers.
DATA_FEATURES = {"soft_label": "scalar", "reward_margins": "vector", "aligned_logps": "vector"}
# Extra responses a pairs row may carry (a row field holding response text, like `chosen`). They
# are tokenized like the pair's responses and scored as extra rows, never as extra list entries.
RESPONSE_FIELDS = {"ref_sample": "a response sampled from the reference policy for the prompt (SELM, XPO)"}
# Other prompts a pairs row may carry (a row field holding prompt text, like `prompt`). The
# trainer scores the pair's responses after them for the reference model only.
PROMPT_FIELDS = {"short_prompt": "the short context x_S + the same instruction as `prompt` (LongPO): the reference "
                                 "scores chosen and rejected after it, the policy after `prompt`"}


# Row fields of a pair kept on the Example: ids and scores, and what builders add (the curriculum
# stage, reward-augmented relabeling's target score), so that a built file reads back unchanged.
PAIR_EXTRAS = ("id", "score_chosen", "score_rejected", "subset", "stage", "target_score", "samples")


class DataError(ValueError):
    def __init__(self, source: str, row: int, field_name: str, message: str):
        self.source, self.row, self.field, self.reason = source, row, field_name, message
        super().__init__(f"{source}, row {row}, field {field_name!r}: {message}")


@dataclass
class Example:
    prompt: Text
    responses: list[Text]
    target: list[float]
    kind: str  # "pair" | "list" | "unpaired" | "triple"
    source: str = ""  # "file:row", for messages about this example
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    first_errors: list[str] = field(default_factory=list)
    # parts of kept rows that became no example, by reason (e.g. deleted messages of a tree row)
    left_out: Counter = field(default_factory=Counter)
    # ranked lists in which several systems wrote the same text: the copies became one response
    merged_lists: int = 0
    merged_responses: int = 0  # responses removed by those merges

    def skip(self, err: DataError) -> None:
        self.skipped[f"{err.field}: {err.reason}"] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(str(err))

    def as_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "skipped": sum(self.skipped.values()),
                "skipped_by_reason": dict(self.skipped), "first_errors": self.first_errors,
                "merged_identical_responses": {"lists": self.merged_lists, "responses": self.merged_responses},
                **({"left_out_by_reason": dict(self.left_out)} if self.left_out else {})}


def check_text(value: Any, source: str, row: int, name: str, allow_messages: bool = True) -> Text:
    """A non-empty string, or a non-empty list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(source, row, name, "is empty")
        return value
    if allow_messages and isinstance(value, list):
        if not value:
            raise DataError(source, row, name, "is an empty message list")
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) \
                    or not isinstance(msg.get("content"), str):
                raise DataError(source, row, f"{name}[{i}]", "must be a {role: str, content: str} message")
        if not any(m["content"].strip() for m in value):
            raise DataError(source, row, name, "has only empty messages")
        return value
    if value is None:
        raise DataError(source, row, name, "is missing")
    kind = "string or message list" if allow_messages else "string"
    raise DataError(source, row, name, f"must be a {kind}, got {type(value).__name__}")


def require(row: dict, name: str, source: str, row_no: int) -> Any:
    if name not in row or row[name] is None:
        raise DataError(source, row_no, name, f"is missing (row has: {', '.join(sorted(row)) or 'nothing'})")
    return row[name]


def common_prefix(a, b) -> int:
    """How many leading items (characters or messages) two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_hh_dialogue(chosen: str, rejected: str, source: str, row: int) -> tuple[str, str, str]:
    """Split HH-RLHF transcripts at the last "\\n\\nAssistant:" they share.

    Both transcripts repeat the conversation and differ only in the final assistant turn, so
    the prompt is everything up to and including the last common assistant marker.
    """
    limit = common_prefix(chosen, rejected)
    cut = chosen.rfind(HH_ASSISTANT, 0, limit)  # the whole marker must lie in the shared part
    if cut < 0:
        raise DataError(source, row, "chosen", f"no shared {HH_ASSISTANT!r} turn to split the prompt at")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def split_shared_text(chosen: str, rejected: str, source: str, row: int) -> tuple[str, str, str]:
    """TRL's standard implicit-prompt pair: two full texts; the prompt is the text they share.

    An HH-style transcript (both texts hold "\\n\\nAssistant:") is cut after its last shared
    assistant marker, or is an error when they share none. Other text is cut at the longest
    common prefix moved back to a word boundary: a word only partly shared ("4" of "42" / "45")
    and the whitespace before it go to the responses, so "The sky is blue." / "The sky is
    green." give "The sky is" + " blue.".
    """
    if HH_ASSISTANT in chosen and HH_ASSISTANT in rejected:
        return split_hh_dialogue(chosen, rejected, source, row)
    cut = common_prefix(chosen, rejected)
    continues = [cut < len(t) and not t[cut].isspace() for t in (chosen, rejected)]
    if cut > 0 and not chosen[cut - 1].isspace() and any(continues):  # the cut is inside a word
        while cut > 0 and not chosen[cut - 1].isspace():
            cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    if cut == 0:
        raise DataError(source, row, "chosen", "shares no leading words with rejected: there is no prompt to split off "
                                               "(add a 'prompt' field)")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def as_turns(prompt: Text) -> Messages:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def same_turn(a: dict, b: dict) -> bool:
    # only role and content render; other keys (ids, names from an export) do not make turns differ
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


def check_reply_turns(turns: Messages, source: str, row: int, name: str) -> Messages:
    """A response as messages: non-empty, no user turn (it would be trained as model output),
    ending with an assistant turn."""
    if not any(m["content"].strip() for m in turns):
        raise DataError(source, row, name, "has no reply after the prompt" if turns else "has no turns after the prompt")
    users = [i for i, m in enumerate(turns) if m["role"] == "user"]
    if users or turns[-1]["role"] != "assistant":
        where = f"has a user turn after the prompt (turn {users[0]} of the reply)" if users else \
            f"must end with an assistant turn, ends with {turns[-1]['role']!r}"
        raise DataError(source, row, name, where)
    return turns


def split_shared_messages(chosen: Messages, rejected: Messages, source: str, row: int,
                          ) -> tuple[Messages, Messages, Messages]:
    """TRL's conversational implicit-prompt pair: the leading messages both conversations share
    are the prompt, the rest of each is its response (split on message boundaries; tokenize then
    finds the token boundary as for any chat prompt)."""
    n = common_prefix([(m["role"], m["content"]) for m in chosen], [(m["role"], m["content"]) for m in rejected])
    if n == 0:
        raise DataError(source, row, "chosen", "shares no leading message with rejected: there is no prompt to "
                                               "split off (add a 'prompt' field)")
    return chosen[:n], check_reply_turns(chosen[n:], source, row, "chosen"), \
        check_reply_turns(rejected[n:], source, row, "rejected")


def strip_repeated_prompt(prompt: Text, reply: Text, source: str, row: int, name: str) -> Text:
    """A chat reply that starts with the prompt's turns again (HuggingFaceH4/ultrafeedback_binarized:
    prompt "q", chosen [user "q", assistant "a"]) loses them; a reply that starts with a non-assistant
    turn which is not the prompt is an error rather than a guess."""
    if not isinstance(reply, list) or reply[0]["role"] == "assistant":
        return check_reply_turns(reply, source, row, name) if isinstance(reply, list) else reply
    turns = as_turns(prompt)
    if len(reply) <= len(turns) or not all(same_turn(a, b) for a, b in zip(turns, reply)):
        raise DataError(source, row, name, f"starts with a {reply[0]['role']} turn but does not repeat the prompt's "
                                           f"{len(turns)} turn(s) and then reply; give only the reply, or the "
                                           "whole conversation without a 'prompt' field")
    return check_reply_turns(reply[len(turns):], source, row, name)


def data_features(row: dict, source: str, row_no: int) -> dict:
    found = {}
    for name, shape in DATA_FEATURES.items():
        if name not in row or row[name] is None:
            continue
        value = row[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if shape == "scalar" else \
            isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value)
        if not ok:
            kind = "a number" if shape == "scalar" else "a non-empty list of numbers"
            raise DataError(source, row_no, name, f"must be {kind}, got {value!r}")
        found[name] = float(value) if shape == "scalar" else [float(v) for v in value]
    return found


def make_pair(row: dict, source: str, row_no: int, fmt: str) -> Example:
    """`pairs` rows give a prompt; `implicit` rows do not (the shared start of chosen and rejected
    is the prompt); `hh` is `implicit` held to the HH-RLHF transcript rule."""
    if fmt in ("hh", "implicit"):
        text_only = fmt == "hh"
        chosen = check_text(require(row, "chosen", source, row_no), source, row_no, "chosen", not text_only)
        rejected = check_text(require(row, "rejected", source, row_no), source, row_no, "rejected", not text_only)
        if chosen == rejected:
            raise DataError(source, row_no, "rejected", "is identical to chosen")
        if isinstance(chosen, list) != isinstance(rejected, list):
            raise DataError(source, row_no, "rejected", "must be a message list like chosen, or text like chosen")
        split = split_hh_dialogue if text_only else split_shared_messages if isinstance(chosen, list) \
            else split_shared_text
        prompt, chosen, rejected = split(chosen, rejected, source, row_no)
    else:
        prompt = check_text(require(row, "prompt", source, row_no), source, row_no, "prompt")
        chosen = check_text(require(row, "chosen", source, row_no), source, row_no, "chosen")
        rejected = check_text(require(row, "rejected", source, row_no), source, row_no, "rejected")
        # the H4 shape: a conversation repeats the prompt's turns; then the prompt becomes those turns
        repeats = any(isinstance(x, list) and x[0]["role"] != "assistant" for x in (chosen, rejected))
        chosen = strip_repeated_prompt(prompt, chosen, source, row_no, "chosen")
        rejected = strip_repeated_prompt(prompt, rejected, source, row_no, "rejected")
        prompt = as_turns(prompt) if repeats else prompt
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, str) and not value.strip():
            raise DataError(source, row_no, name, "response is empty")
    if chosen == rejected:
        raise DataError(source, row_no, "rejected", "is identical to chosen")
    extra = {k: row[k] for k in PAIR_EXTRAS if row.get(k) is not None}  # Parquet stores absent as null
    extra["features"] = data_features(row, source, row_no)
    for name in RESPONSE_FIELDS:
        if row.get(name) is not None:
            # implicit rows hold whole dialogues in chosen/rejected, but an extra response is only the reply
            chat = fmt == "pairs" or isinstance(prompt, list)
            extra[name] = check_text(row[name], source, row_no, name, allow_messages=chat)
    for name in PROMPT_FIELDS:
        if row.get(name) is not None:
            extra[name] = check_text(row[name], source, row_no, name)
            if isinstance(extra[name], list) != isinstance(prompt, list):
                # one rendering rule per pair: the reference must see the responses as the policy does
                raise DataError(source, row_no, name, "must be text when prompt is text and a message list when "
                                                      "prompt is one")
    return Example(prompt, [chosen, rejected], [1.0, 0.0], "pair", f"{source}:{row_no}", extra)


def response_score(resp: dict, source: str, row: int, i: int, aspect: str | dict | None) -> float:
    """A response's score (higher is better): `score`, negated `rank`, or one aspect of `scores`
    (`aspect` a name) or a weighted sum of aspects (`aspect` a {name: weight} mapping)."""
    if "score" in resp:
        value = resp["score"]
    elif "rank" in resp:
        value = resp["rank"]
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(source, row, f"responses[{i}].rank", "must be an integer (0 = best)")
        return -float(value)  # rank 0 is best: negate so that higher is better
    elif "scores" in resp and isinstance(resp["scores"], dict) and isinstance(aspect, dict):
        # a weighted combination of aspects, e.g. {"informativeness": 0.5, "naturalness": 0.5}
        missing = [a for a in aspect if a not in resp["scores"]]
        if missing:
            raise DataError(source, row, f"responses[{i}].scores", f"has no aspect {missing[0]!r} "
                            f"(data.score_weights); it has {sorted(resp['scores'])}")
        value = sum(float(w) * float(resp["scores"][a]) for a, w in aspect.items())
    elif "scores" in resp and isinstance(resp["scores"], dict):
        key = aspect or ("overall" if "overall" in resp["scores"] else None)
        if key is None or key not in resp["scores"]:
            raise DataError(source, row, f"responses[{i}].scores",
                            f"set data.score_aspect to one of {sorted(resp['scores'])}")
        value = resp["scores"][key]
    else:
        raise DataError(source, row, f"responses[{i}]", "needs a 'score', 'rank' or 'scores' field")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(source, row, f"responses[{i}].score", f"must be a number, got {type(value).__name__}")
    return float(value)


def merge_identical(texts: list[Text], scores: list[float], aspects: list[dict | None],
                    ) -> tuple[list[Text], list[float], list[dict | None]]:
    """One response per distinct text, at its first position, with the mean of its copies' scores
    (and of each aspect's ratings). Rating data holds such copies when two systems wrote the same
    text; each copy is a real rating of that text, so none is thrown away."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(json.dumps(t, sort_keys=True, ensure_ascii=False), []).append(i)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    out_texts, out_scores, out_aspects = [], [], []
    for idx in groups.values():
        out_texts.append(texts[idx[0]])
        out_scores.append(mean([scores[i] for i in idx]))
        rated = [aspects[i] for i in idx if isinstance(aspects[i], dict)]
        names = list(dict.fromkeys(k for a in rated for k in a))
        out_aspects.append({k: mean([float(a[k]) for a in rated if k in a]) for k in names} if rated else None)
    return out_texts, out_scores, out_aspects


def make_list(row: dict, source: str, row_no: int, aspect: str | dict | None = None,
              report: LoadReport | None = None) -> Example:
    """A ranked list. Identical responses are merged (scores averaged) and counted in `report`;
    a list left with one response is a bad row."""
    prompt_key = "messages" if "messages" in row else "prompt"
    prompt = check_text(require(row, prompt_key, source, row_no), source, row_no, prompt_key)
    responses = require(row, "responses", source, row_no)
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(source, row_no, "responses", "must be a list of at least 2 responses")
    texts, scores = [], []
    if "scores" in row and all(isinstance(r, (str, list)) for r in responses):
        raw = row["scores"]
        if not isinstance(raw, list) or len(raw) != len(responses):
            raise DataError(source, row_no, "scores", "must be a list with one number per response")
        for i, (r, s) in enumerate(zip(responses, raw)):
            texts.append(check_text(r, source, row_no, f"responses[{i}]"))
            scores.append(response_score({"score": s}, source, row_no, i, aspect))
    else:
        for i, r in enumerate(responses):
            if not isinstance(r, dict):
                raise DataError(source, row_no, f"responses[{i}]", "must be {text, score|rank|scores}")
            texts.append(check_text(r.get("text"), source, row_no, f"responses[{i}].text"))
            scores.append(response_score(r, source, row_no, i, aspect))
    aspects = [r.get("scores") if isinstance(r, dict) else None for r in responses]
    n_given = len(texts)
    texts, scores, aspects = merge_identical(texts, scores, aspects)
    if len(texts) < 2:
        raise DataError(source, row_no, "responses", f"all {n_given} responses are the same text: nothing to rank")
    if len(set(scores)) == 1:
        raise DataError(source, row_no, "responses", "all responses have the same score: no preference")
    extra = {k: row[k] for k in ("id",) if row.get(k) is not None}
    if all(isinstance(a, dict) for a in aspects):
        extra["aspect_scores"] = aspects  # kept so that a builder can re-rank by another aspect later
    if report is not None and len(texts) < n_given:  # counted only for rows that are kept
        report.merged_lists += 1
        report.merged_responses += n_given - len(texts)
    return Example(prompt, texts, scores, "list", f"{source}:{row_no}", extra)


def make_sft(row: dict, source: str, row_no: int) -> Example:
    prompt = check_text(require(row, "prompt", source, row_no), source, row_no, "prompt")
    completion = check_text(require(row, "completion", source, row_no), source, row_no, "completion")
    return Example(prompt, [completion], [1.0], "sft", f"{source}:{row_no}",
                   {"features": data_features(row, source, row_no)})


def make_unpaired(row: dict, source: str, row_no: int) -> Example:
    """TRL's unpaired preference rows, text or conversational; a conversational completion may
    repeat the prompt's turns first (as in the H4 pairs shape). TRL defines no implicit-prompt
    unpaired shape, so `prompt` is required."""
    prompt = check_text(require(row, "prompt", source, row_no), source, row_no, "prompt")
    completion = check_text(require(row, "completion", source, row_no), source, row_no, "completion")
    repeats = isinstance(completion, list) and completion[0]["role"] != "assistant"
    completion = strip_repeated_prompt(prompt, completion, source, row_no, "completion")
    prompt = as_turns(prompt) if repeats else prompt
    label = require(row, "label", source, row_no)
    if not isinstance(label, bool):
        raise DataError(source, row_no, "label", f"must be true or false, got {label!r}")
    return Example(prompt, [completion], [float(label)], "unpaired", f"{source}:{row_no}")


def make_triple(row: dict, source: str, row_no: int) -> Example:
    prompt = check_text(require(row, "prompt", source, row_no), source, row_no, "prompt")
    texts = [check_text(require(row, k, source, row_no), source, row_no, k) for k in ("gold", "chosen", "rejected")]
    if texts[1] == texts[2]:
        raise DataError(source, row_no, "rejected", "is identical to chosen")
    return Example(prompt, texts, [2.0, 1.0, 0.0], "triple", f"{source}:{row_no}")


FORMATS = ("pairs", "implicit", "hh", "ranked", "unpaired", "sft", "triples", "oasst_trees")


def detect_format(row: dict, source: str) -> str:
    keys = set(row)
    if {"message_tree_id", "prompt"} <= keys:
        return "oasst_trees"  # one row is a whole OpenAssistant message tree (data/formats/oasst.py)
    if {"gold", "chosen", "rejected"} <= keys:
        return "triples"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "pairs"
    if {"chosen", "rejected"} <= keys:
        return "implicit"  # TRL's implicit prompt: HH transcripts, shared text, or shared leading messages
    if "responses" in keys and keys & {"prompt", "messages"}:
        return "ranked"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if {"prompt", "completion"} <= keys:
        return "sft"
    raise DataError(source, 1, "*", f"cannot tell the format from the fields {sorted(keys)}; set data.format "
                                    f"to one of {FORMATS}")


def make_example(row: Any, fmt: str, source: str, row_no: int, aspect: str | dict | None = None,
                 report: LoadReport | None = None) -> Example:
    if not isinstance(row, dict):
        raise DataError(source, row_no, "*", f"a row must be an object, got {type(row).__name__}")
    if fmt in ("pairs", "implicit", "hh"):
        return make_pair(row, source, row_no, fmt)
    if fmt == "ranked":
        return make_list(row, source, row_no, aspect, report)
    if fmt == "unpaired":
        return make_unpaired(row, source, row_no)
    if fmt == "sft":
        return make_sft(row, source, row_no)
    if fmt == "triples":
        return make_triple(row, source, row_no)
    raise ValueError(f"unknown data format {fmt!r}; choose one of {FORMATS}")
