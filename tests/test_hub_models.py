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
import yaml

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
from prefalign.judges import make_judge
for judge in ("principle", "follow_up", "rubric"):  # LM judges take a pinned revision, and refuse an unknown one
    made = make_judge(judge, path="owner/tiny", revision="%(commit)s")
    # the rubric judge keeps its model inside its generate function: built at all is what it can show
    model = getattr(made, "model", None)
    out[judge + "_equal"] = model is None or torch.equal(model.lm_head.weight, saved["lm_head.weight"])
    try:
        make_judge(judge, path="owner/tiny", revision="v9")
        out[judge + "_v9"] = None
    except ModelNotFoundError as err:
        out[judge + "_v9"] = str(err)
pinned = RewardBackbone("owner/tiny", max_length=32, revision="%(commit)s")
out["backbone_commit"] = pinned.commit
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
    assert got["backbone_commit"] == COMMIT
    for judge in ("principle", "follow_up", "rubric"):
        assert got[judge + "_equal"], judge
        assert "'owner/tiny'" in got[judge + "_v9"] and "'v9'" in got[judge + "_v9"], judge
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


def test_run_config_yaml_pins_the_resolved_commit_and_trains_again(hub_cache, tmp_path):
    # asked for main (the default): config.yaml records the commit main resolved to, so training from it
    # again reads the same weights even after main moves
    out = run_train(hub_cache, tmp_path, "model=owner/tiny")
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert f"# model_revision: main resolved to commit {COMMIT}" in text
    saved = yaml.safe_load(text)
    assert saved["model"] == "owner/tiny" and saved["model_revision"] == COMMIT
    assert saved["reference_model_revision"] is None and saved["trust_remote_code"] is False
    again = subprocess.run([sys.executable, "-m", "prefalign.cli", "train", str(tmp_path / "run" / "config.yaml"),
                            f"output_dir={tmp_path / 'again'}"], capture_output=True, text=True, timeout=300,
                           env=offline_env(hub_cache))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["model_commit"] == COMMIT


def test_missing_builder_generator_or_judge_revision_is_one_clear_error(hub_cache, tmp_path):
    out = run_train(hub_cache, tmp_path, "model=owner/tiny", "data.builder_generator=owner/tiny",
                    "data.builder_generator_revision=v9")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "'owner/tiny' at revision 'v9'" in out.stderr and "HF_HUB_OFFLINE" in out.stderr
    assert not (tmp_path / "run").exists()
    build = subprocess.run([sys.executable, "-m", "prefalign.cli", "data", "build",
                            str(ROOT / "tests/fixtures/hh_harmless_64.jsonl"), "--builder", "dedup",
                            "--generator-model", "owner/absent", "--out", str(tmp_path / "out.jsonl")],
                           capture_output=True, text=True, timeout=300, env=offline_env(hub_cache))
    assert build.returncode == 1 and "Traceback" not in build.stderr
    assert "'owner/absent'" in build.stderr and "hf download owner/absent" in build.stderr
    assert not (tmp_path / "out.jsonl").exists()


def run_train_rm(cache: Path, tmp_path: Path, *overrides) -> subprocess.CompletedProcess:
    args = ["train-rm", f"data.train={ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}", f"output_dir={tmp_path / 'rm'}",
            "max_steps=2", "batch_size=4", "max_length=64", "progress=false", "data.eval_fraction=0.25", *overrides]
    return subprocess.run([sys.executable, "-m", "prefalign.cli", *args], capture_output=True, text=True,
                          timeout=300, env=offline_env(cache))


def test_train_rm_by_pinned_hub_id_records_the_commit(hub_cache, tmp_path):
    out = run_train_rm(hub_cache, tmp_path, "backbone=owner/tiny", f"backbone_revision={COMMIT}")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    assert summary["backbone_commit"] == COMMIT
    assert yaml.safe_load((tmp_path / "rm" / "config.yaml").read_text())["backbone_revision"] == COMMIT
    card = (tmp_path / "rm" / "final" / "README.md").read_text()
    assert "base_model: owner/tiny" in card and f"at commit `{COMMIT}`" in card


def test_train_rm_with_a_missing_backbone_id_offline_is_one_clear_error(hub_cache, tmp_path):
    for overrides in (["backbone=owner/not-cached"], ["backbone=owner/tiny", "backbone_revision=v9"]):
        out = run_train_rm(hub_cache, tmp_path, *overrides)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "HF_HUB_OFFLINE" in out.stderr and "cannot resolve model" in out.stderr
        assert not (tmp_path / "rm").exists()


# A model folder whose config names its own modelling code (auto_map), as remote-code repos do. Importing
# that code leaves a marker file, so a test sees whether it ran; its classes subclass Llama's, so both
# loads work and only the class name tells which code built the model.
REMOTE_CODE = """import os
from pathlib import Path

from transformers import LlamaForCausalLM, LlamaModel

Path(os.environ["REMOTE_CODE_MARKER"]).write_text("remote code ran")


class MarkedLlamaForCausalLM(LlamaForCausalLM):
    pass


class MarkedLlamaModel(LlamaModel):
    pass
"""


@pytest.fixture(scope="module")
def remote_code_model(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("remote-code-model")
    for f in tiny_model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_marked.MarkedLlamaForCausalLM",
                          "AutoModel": "modeling_marked.MarkedLlamaModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_marked.py").write_text(REMOTE_CODE)
    return folder


LOAD_REMOTE = """
import json, os, sys
from pathlib import Path
from prefalign.models.causal_lm import load_model
from prefalign.rewards.backbone import RewardBackbone
marker, folder, trust = Path(os.environ["REMOTE_CODE_MARKER"]), sys.argv[1], sys.argv[2] == "trust"
out = {"policy": type(load_model(folder, trust_remote_code=trust)).__name__,
       "backbone": type(RewardBackbone(folder, trust_remote_code=trust).model).__name__}
if not trust:
    out["default_policy"] = type(load_model(folder)).__name__
out["ran"] = marker.exists()
print(json.dumps(out))
"""


def remote_env(tmp_path: Path) -> dict:
    return {**offline_env(tmp_path / "empty-cache"), "REMOTE_CODE_MARKER": str(tmp_path / "marker"),
            "HF_MODULES_CACHE": str(tmp_path / "modules")}


@pytest.mark.parametrize("trust", ["default", "trust"])
def test_trust_remote_code_reaches_from_pretrained_and_is_off_by_default(remote_code_model, tmp_path, trust):
    out = subprocess.run([sys.executable, "-c", LOAD_REMOTE, str(remote_code_model), trust], capture_output=True,
                         text=True, timeout=300, env=remote_env(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if trust == "trust":
        assert got == {"policy": "MarkedLlamaForCausalLM", "backbone": "MarkedLlamaModel", "ran": True}
    else:  # the repo's code never ran: transformers' own Llama classes built both models
        assert got == {"policy": "LlamaForCausalLM", "backbone": "LlamaModel", "default_policy": "LlamaForCausalLM",
                       "ran": False}


def test_trust_remote_code_key_reaches_the_training_run(remote_code_model, tmp_path):
    env = remote_env(tmp_path)
    base = ["train", f"model={remote_code_model}", f"data.train={ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}",
            "max_steps=1", "batch_size=2", "max_length=64", "progress=false", "data.eval_fraction=0.1"]
    off = subprocess.run([sys.executable, "-m", "prefalign.cli", *base, f"output_dir={tmp_path / 'off'}"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert off.returncode == 0, off.stderr[-3000:]
    assert not (tmp_path / "marker").exists()  # the default run never imported the repo's code
    on = subprocess.run([sys.executable, "-m", "prefalign.cli", *base, f"output_dir={tmp_path / 'on'}",
                         "trust_remote_code=true"], capture_output=True, text=True, timeout=300, env=env)
    assert on.returncode == 0, on.stderr[-3000:]
    assert (tmp_path / "marker").read_text() == "remote code ran"


def test_encoder_and_magpie_model_take_a_pinned_revision(hub_cache, tmp_path):
    # the encoder resolves the tiny Llama's folder by id at the cached commit; a missing revision is one error
    code = ("from prefalign.models.encoders import SentenceEncoder\n"
            f"e = SentenceEncoder('owner/tiny', revision='{COMMIT}')\n"
            "print(tuple(e.encode(['a b', 'c']).shape))")
    out = run_python(code, hub_cache)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(2, 32)")
    magpie = subprocess.run([sys.executable, "-m", "prefalign.cli", "data", "magpie", "--model", "owner/tiny",
                             "--model-revision", "v9", "-n", "1", "--out", str(tmp_path / "m.jsonl")],
                            capture_output=True, text=True, timeout=300, env=offline_env(hub_cache))
    assert magpie.returncode == 1 and "Traceback" not in magpie.stderr
    assert "'owner/tiny' at revision 'v9'" in magpie.stderr and not (tmp_path / "m.jsonl").exists()
