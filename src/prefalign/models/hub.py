"""One place where a model name becomes a local folder: a folder on disk, or a Hugging Face Hub id.

A Hub id goes through huggingface_hub.snapshot_download, which honours HF_HUB_OFFLINE, HF_HOME /
HF_HUB_CACHE and a pinned revision itself; only the files a model needs are fetched (config,
tokenizer, chat template, safetensors weights: never pickled .bin weights or remote code).
"""

from __future__ import annotations

import re
from pathlib import Path

# what loading a config, tokenizer, chat template and safetensors weights reads; nothing else
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
# a repo's own modelling code: fetched only when the user sets trust_remote_code (it runs on load)
REMOTE_CODE_FILES = ["*.py"]
COMMIT = re.compile(r"[0-9a-f]{40}")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a local folder nor a Hub id that could be resolved."""


def looks_like_repo_id(name: str) -> bool:
    # "owner/name" or a bare "name"; paths that say they are paths (./x, /x, ~/x, a/b/c) are never ids
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name:
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None


def resolve_model(name_or_path: str, revision: str | None = None,
                  trust_remote_code: bool = False) -> tuple[str, str | None]:
    """(local folder, commit hash) of a model: an existing folder as is (commit None), else a Hub id
    resolved through the standard cache (commit: the snapshot's 40-hex commit). Python files are
    fetched only with trust_remote_code=True."""
    name = str(name_or_path)
    if Path(name).expanduser().is_dir():
        if revision:
            raise ValueError(f"revision {revision!r} was given for the local folder {name}; "
                             "a revision pins a Hugging Face Hub id only")
        return str(Path(name).expanduser()), None
    if not looks_like_repo_id(name):
        raise ModelNotFoundError(f"model folder not found: {name} (give a local folder of a Hugging Face "
                                 "model or a Hub id such as owner/name)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        patterns = MODEL_FILES + (REMOTE_CODE_FILES if trust_remote_code else [])
        folder = snapshot_download(name, revision=revision, allow_patterns=patterns)
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError) as err:
        raise ModelNotFoundError(not_found_message(name, revision, constants.HF_HUB_OFFLINE, err)) from None
    commit = Path(folder).name
    return folder, commit if COMMIT.fullmatch(commit) else None


def not_found_message(name: str, revision: str | None, offline: bool, err: Exception) -> str:
    what = f"model {name!r}" + (f" at revision {revision!r}" if revision else "")
    if offline:
        todo = (f"HF_HUB_OFFLINE=1 is set and the Hugging Face cache has no snapshot of it; download it "
                f"while online (hf download {name}" + (f" --revision {revision}" if revision else "")
                + "), or unset HF_HUB_OFFLINE (HF_HUB_OFFLINE=0), or pass a local folder")
    else:
        todo = ("check the id and revision and your connection (gated or private repos need `hf auth login`), "
                "or pass a local folder; HF_HUB_OFFLINE is not set")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"cannot resolve {what}: {todo} ({type(err).__name__}: {first_line})"
