"""`prefalign reproduce`: discovery of claim modules, --list, the overwrite guard, and `all`'s table."""

from __future__ import annotations

import json
import sys

import pytest

import prefalign.reproduce as package
from prefalign.cli.main import main
from prefalign.reproduce import claims
from prefalign.reproduce.claims import ClaimResult, Verdict, claim, load_claims, summary_table


@pytest.fixture
def toy_claims(monkeypatch):
    """A private registry holding two toy claims (one passes, one fails), so `all` runs only them."""
    monkeypatch.setattr(claims, "CLAIMS", {})
    calls = []

    @claim("toy-up", paper="Toy paper (arXiv:0000.00001)", paper_claim="x rises | a lot")
    def up(out_dir, quick):
        calls.append(("toy-up", quick))
        return ClaimResult(Verdict.PASS, measured="x 1.0 -> 2.0", reason="rise 1.0 >= 0.5")

    @claim("toy-down", paper="Toy paper (arXiv:0000.00002)", paper_claim="x falls")
    def down(out_dir, quick):
        calls.append(("toy-down", quick))
        return ClaimResult(Verdict.FAIL, measured="x 1.0 -> 1.1", reason="fall -0.1 < 0")

    return calls


def test_load_claims_imports_every_module_of_the_package_and_reports_broken_ones(tmp_path, monkeypatch):
    (tmp_path / "toy_discovered.py").write_text(
        "from prefalign.reproduce.claims import ClaimResult, Verdict, claim\n"
        "@claim('toy-discovered', paper='p', paper_claim='c')\n"
        "def run(out_dir, quick):\n    return ClaimResult(Verdict.PASS, 'm', 'r')\n")
    (tmp_path / "toy_broken.py").write_text("raise ImportError('needs a package that is not installed')\n")
    monkeypatch.setattr(package, "__path__", list(package.__path__) + [str(tmp_path)])
    try:
        failed = load_claims()
        assert "toy-discovered" in claims.CLAIMS  # nobody listed it anywhere
        assert {"ranking-gap", "gpm-cyclic", "pal-plural", "listwise-k2"} <= set(claims.CLAIMS)
        assert list(failed) == ["prefalign.reproduce.toy_broken"]
        assert "needs a package that is not installed" in failed["prefalign.reproduce.toy_broken"]
    finally:
        claims.CLAIMS.pop("toy-discovered", None)
        for name in ("prefalign.reproduce.toy_discovered", "prefalign.reproduce.toy_broken"):
            sys.modules.pop(name, None)


def test_a_claim_runs_once_then_refuses_to_overwrite_without_force(toy_claims, tmp_path, capsys):
    assert main(["reproduce", "toy-up", "--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "toy-up" / "result.json").read_text())
    assert record["verdict"] == "PASS" and record["quick"] is True
    assert main(["reproduce", "toy-up", "--out", str(tmp_path)]) == 1
    assert "already holds a finished result" in capsys.readouterr().err
    assert toy_claims == [("toy-up", True)]  # the refused run never started
    assert main(["reproduce", "toy-up", "--force", "--out", str(tmp_path)]) == 0
    assert toy_claims == [("toy-up", True), ("toy-up", False)]
    assert main(["reproduce", "no-such-claim", "--out", str(tmp_path)]) == 1
    assert "unknown reproduction 'no-such-claim'" in capsys.readouterr().err


def test_list_shows_paper_claim_and_last_verdict(toy_claims, tmp_path, capsys):
    main(["reproduce", "toy-down", "--out", str(tmp_path)])
    capsys.readouterr()
    assert main(["reproduce", "--list", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    down = next(line for line in out.splitlines() if "toy-down" in line)
    up = next(line for line in out.splitlines() if "toy-up" in line)
    assert "FAIL" in down and "arXiv:0000.00002" in down
    assert "-" in up and "PASS" not in up and "FAIL" not in up  # never run: no verdict


def test_all_runs_every_claim_keeps_finished_ones_and_writes_the_readme_table(toy_claims, tmp_path):
    main(["reproduce", "toy-up", "--out", str(tmp_path)])
    assert main(["reproduce", "all", "--out", str(tmp_path)]) == 0
    assert toy_claims == [("toy-up", False), ("toy-down", False)]  # toy-up's finished result was reused
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[0] == "| claim | command | paper's number or shape | ours | verdict | time on 2 cores |"
    assert lines[1] == "|---|---|---|---|---|---|"
    # rows in name order; the pipe inside the paper's claim is escaped so the row keeps 6 cells
    assert lines[2].startswith("| toy-down | `prefalign reproduce toy-down` | x falls (Toy paper (arXiv:0000.00002)) "
                               "| x 1.0 -> 1.1 | **FAIL** | ")
    assert lines[3].startswith("| toy-up | `prefalign reproduce toy-up` | x rises \\| a lot (Toy paper")
    assert lines[3].count(" | ") == 5 and lines[3].endswith(" s CPU) |")


def test_all_reports_a_crashing_claim_and_still_runs_the_others(toy_claims, tmp_path, capsys):
    @claim("toy-crash", paper="p", paper_claim="c")
    def crash(out_dir, quick):
        raise RuntimeError("testbed broke")

    assert main(["reproduce", "all", "--quick", "--out", str(tmp_path)]) == 1
    text = (tmp_path / "summary.md").read_text()
    assert "toy-crash: RuntimeError: testbed broke" in text and "| toy-up |" in text and "| toy-down |" in text
    assert not (tmp_path / "toy-crash" / "result.json").exists()  # no half-written result
    assert "(quick setting)" in text


def test_summary_table_formats_minutes():
    row = {"name": "c", "paper": "p", "paper_claim": "pc", "measured": "m", "verdict": "PASS", "seconds": 125.4}
    assert summary_table([row]).splitlines()[2] == "| c | `prefalign reproduce c` | pc (p) | m | **PASS** | 2 min 05 s |"
    row["cpu_seconds"] = 61.0
    assert summary_table([row]).splitlines()[2].endswith("| 2 min 05 s (1 min 01 s CPU) |")
