"""`prefalign quickstart` tells a new user where the run is and what to type next, and those commands work."""

from __future__ import annotations

import contextlib
import io
import json
import shlex

import pytest

from prefalign.cli.main import main
from prefalign.recipes.policy import resolve_run_dir

CHEAP_DIAGNOSE = ["--pairs", "4", "--prompts", "2", "--max-new-tokens", "4", "--checkpoints", "2", "--no-progress"]


def shrunk_quickstart(out) -> str:
    """The tiny quickstart, shrunk (16 training pairs, 6 held out, 2 steps), into `out`; what it printed."""
    import prefalign.recipes.quickstart as qs

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(qs.HELD_OUT, "tiny", 6)
        mp.setitem(qs.TRAIN_LIMIT, "tiny", 16)
        mp.setitem(qs.PRESETS, "tiny", dict(qs.PRESETS["tiny"], logging_steps=1, eval_steps=1))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            qs.run_quickstart("tiny", str(out), steps=2)
    return printed.getvalue()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The shrunk quickstart, run once for the module."""
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    return out, shrunk_quickstart(out)


def test_running_the_quickstart_again_starts_fresh_in_its_own_folder(tmp_path):
    # a second `prefalign quickstart` must recognise every file the first one wrote (prompts.jsonl was
    # once missing from that list, so the README's command failed the second time it was typed)
    out = tmp_path / "quickstart"
    shrunk_quickstart(out)
    first = sorted(p.name for p in out.iterdir())
    again = shrunk_quickstart(out)
    assert "starting fresh: removed the earlier quickstart's" in again
    assert all(name in again for name in first if name != ".prefalign-quickstart")
    assert sorted(p.name for p in out.iterdir()) == first


def test_quickstart_prints_the_run_folder_and_next_commands_that_work(quickstart, capsys):
    out, printed = quickstart
    assert f"run folder: {out / 'run'}\n" in printed
    commands = [shlex.split(line.split("#")[0]) for line in printed.splitlines() if line.startswith("  prefalign ")]
    assert [c[1] for c in commands] == ["diagnose", "generate"]
    diagnose, generate = commands
    assert main(diagnose[1:] + CHEAP_DIAGNOSE + ["--output-dir", str(out / "rep-printed")]) == 0, \
        capsys.readouterr().err
    assert (out / "rep-printed" / "report.html").is_file()
    assert main(generate[1:] + ["--max-new-tokens", "4"]) == 0, capsys.readouterr().err
    shown = capsys.readouterr().out
    first_prompt = json.loads((out / "prompts.jsonl").read_text().splitlines()[0])["prompt"]
    assert f"> {first_prompt}" in shown


def test_diagnose_and_generate_accept_the_quickstart_folder(quickstart, capsys):
    out, _ = quickstart
    assert main(["diagnose", str(out), *CHEAP_DIAGNOSE]) == 0, capsys.readouterr().err
    # the report lands in the one run's own diagnostics folder, as for `diagnose OUT/run`
    assert (out / "run" / "diagnostics" / "report.json").is_file()
    assert main(["generate", "--run", str(out), "--prompt", "\n\nHuman: hi\n\nAssistant:", "--max-new-tokens",
                 "3"]) == 0, capsys.readouterr().err
    assert "(no reward conditioning)" in capsys.readouterr().out


def test_resolve_run_dir_names_what_is_wrong(quickstart, tmp_path):
    out, _ = quickstart
    assert resolve_run_dir(out) == out / "run" and resolve_run_dir(out / "run") == out / "run"
    with pytest.raises(FileNotFoundError, match="is not a run folder: no config.yaml in it or in a folder inside"):
        resolve_run_dir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("model: m\n")
    with pytest.raises(ValueError, match=r"holds 2 runs \(a, b\): give one of them"):
        resolve_run_dir(tmp_path)
