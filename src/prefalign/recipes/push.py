"""`prefalign push RUN --repo ID`: upload a run's final/ folder (model, tokenizer, card) to the Hub.

The dry run lists what would go up and makes no network call; the real upload goes through
huggingface_hub's HfApi (create_repo, then upload_folder), which reads the token the usual way
(HF_TOKEN or `huggingface-cli login`).
"""

from __future__ import annotations

import os
from pathlib import Path

from prefalign.recipes.policy import resolve_run_dir

# huggingface_hub's own spelling of a true HF_HUB_OFFLINE
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def final_folder(run: str | Path) -> Path:
    """The run's final/ folder; a run still training or one that crashed has none, and says so."""
    folder = resolve_run_dir(run) / "final"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder.parent} has no final/ folder: the run has not finished, nothing to push")
    return folder


def upload_plan(folder: Path) -> list[tuple[str, int]]:
    """Every file under `folder` as (path relative to it, size in bytes): what upload_folder sends."""
    return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]


def describe(repo: str, folder: Path, plan: list[tuple[str, int]], private: bool, revision: str | None) -> str:
    width = max((len(name) for name, _ in plan), default=0)
    rows = [f"  {name:<{width}}  {size:>12,d} bytes" for name, size in plan]
    head = (f"would upload {len(plan)} files ({sum(s for _, s in plan):,d} bytes) from {folder} to "
            f"{repo} ({'private' if private else 'public'}, revision {revision or 'main'})")
    return "\n".join([head, *rows])


def push(run: str | Path, repo: str, private: bool = False, revision: str | None = None,
         dry_run: bool = False) -> str:
    """Upload RUN/final to the Hub model repo `repo`; returns what was (or would be) uploaded."""
    folder = final_folder(run)
    plan = upload_plan(folder)
    # a run from before cards were written still uploads, but the reader is told it has no card
    note = "" if (folder / "README.md").is_file() else f"note: {folder} has no README.md model card\n"
    if dry_run:
        return note + describe(repo, folder, plan, private, revision)
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES:
        raise RuntimeError(f"cannot push {folder} to {repo}: HF_HUB_OFFLINE is set, so no upload can be made; "
                           "unset it, or use --dry-run to list what would be uploaded")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    if revision:  # upload_folder needs the branch to exist already
        api.create_branch(repo, branch=revision, exist_ok=True)
    commit = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model", revision=revision,
                               commit_message="Upload model trained with prefalign")
    return note + f"uploaded {len(plan)} files from {folder} to {repo}: {commit}"
