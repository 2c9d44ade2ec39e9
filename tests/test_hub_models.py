"""Models by Hugging Face Hub id, offline: a tiny model laid into a temporary HF cache in the hub's
own layout (refs/main -> snapshots/<commit>/ symlinks -> blobs/), then loaded by id.

huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE when it is imported, so every check runs in a
fresh interpreter with those variables set (no mocks: the real snapshot_download reads the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(cache: Path, repo_id: str, model_dir: Path, commit: str = COMMIT) -> Path:
    """The cache folder huggingface_hub writes for `repo_id` at `commit` (branch main)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tiny_model_dir, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf-cache") / "hub"
    lay_out_cache(cache, "owner/tiny", tiny_model_dir)
    return cache


def offline_env(cache: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def run_python(code: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=offline_env(cache))


LOAD_BY_ID = """
import json, sys, torch
from safetensors.torch import load_file
from prefalign.models.causal_lm import load_model, load_tokenizer
from prefalign.models.hub import ModelNotFoundError, resolve_model

local = sys.argv[1] if len(sys.argv) > 1 else None
out = {}
folder, out["commit"] = resolve_model("owner/tiny")
out["pinned_commit"] = resolve_model("owner/tiny", revision="%(commit)s")[1]
model, tok = load_model("owner/tiny"), load_tokenizer("owner/tiny")
saved = load_file("%(local)s/model.safetensors")
state = model.state_dict()
out["weights_equal"] = set(saved) <= set(state) and all(
    torch.equal(state[k], v) for k, v in saved.items())
out["n_tensors"] = len(saved)
out["same_ids"] = tok("Human: hello there")["input_ids"] == load_tokenizer("%(local)s")("Human: hello there")["input_ids"]
from prefalign.rewards.backbone import RewardBackbone
from prefalign.judges.lm import load_lm
backbone = RewardBackbone("owner/tiny", max_length=32)
out["backbone_equal"] = torch.equal(backbone.model.embed_tokens.weight, saved["model.embed_tokens.weight"])
out["judge_equal"] = torch.equal(load_lm("owner/tiny")[0].lm_head.weight, saved["lm_head.weight"])
for name, rev in (("owner/missing", None), ("owner/tiny", "v9")):
    try:
        load_model(name, revision=rev)
        out[name + str(rev)] = None
    except ModelNotFoundError as err:
        out[name + str(rev)] = str(err)
print(json.dumps(out))
"""


def test_hub_id_loads_offline_from_the_cache_and_errors_name_the_id(hub_cache, tiny_model_dir):
    out = run_python(LOAD_BY_ID % {"commit": COMMIT, "local": tiny_model_dir}, hub_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["commit"] == COMMIT and got["pinned_commit"] == COMMIT
    assert got["weights_equal"] and got["n_tensors"] > 0 and got["same_ids"]
    assert got["backbone_equal"] and got["judge_equal"]  # reward backbones and LM judges resolve ids too
    missing = got["owner/missingNone"]
    assert missing and "'owner/missing'" in missing and "HF_HUB_OFFLINE" in missing
    assert "hf download owner/missing" in missing
    # a pinned revision the cache has never seen: the id and the revision are both named
    unpinned = got["owner/tinyv9"]
    assert unpinned and "'owner/tiny'" in unpinned and "'v9'" in unpinned and "HF_HUB_OFFLINE" in unpinned


def run_train(cache: Path, tmp_path: Path, *overrides) -> subprocess.CompletedProcess:
    args = ["train", f"data.train={ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}", f"output_dir={tmp_path / 'run'}",
            "max_steps=2", "batch_size=2", "max_length=64", "max_prompt_length=32", "progress=false", *overrides]
    return subprocess.run([sys.executable, "-m", "prefalign.cli", *args], capture_output=True, text=True,
                          timeout=300, env=offline_env(cache))


def test_train_by_hub_id_records_the_commit(hub_cache, tmp_path):
    out = run_train(hub_cache, tmp_path, "model=owner/tiny", "reference_model=owner/tiny",
                    f"reference_model_revision={COMMIT}")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model_commit"] == COMMIT and summary["reference_model_commit"] == COMMIT
    assert summary["config"]["model"] == "owner/tiny" and summary["steps"] == 2


def test_train_with_a_local_folder_records_no_commit(tiny_model_dir, tmp_path):
    out = run_train(tmp_path / "empty-cache", tmp_path, f"model={tiny_model_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model_commit"] is None and summary["reference_model_commit"] is None


def test_train_with_a_missing_hub_id_offline_is_one_clear_error(hub_cache, tmp_path):
    out = run_train(hub_cache, tmp_path, "model=owner/not-cached")
    assert out.returncode == 1
    assert "owner/not-cached" in out.stderr and "HF_HUB_OFFLINE" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()  # resolved before the run folder is claimed


def test_local_paths_are_never_taken_for_hub_ids(tmp_path):
    from prefalign.models.hub import ModelNotFoundError, looks_like_repo_id, resolve_model

    assert looks_like_repo_id("owner/name") and looks_like_repo_id("gpt2")
    for path in ("./owner/name", "/abs/folder", "~/models/x", "a/b/c", str(tmp_path / "nope")):
        assert not looks_like_repo_id(path)
    with pytest.raises(ModelNotFoundError, match="model folder not found"):
        resolve_model(str(tmp_path / "nope"))
    assert resolve_model(str(tmp_path)) == (str(tmp_path), None)
    with pytest.raises(ValueError, match="pins a Hugging Face Hub id only"):
        resolve_model(str(tmp_path), revision="main")
