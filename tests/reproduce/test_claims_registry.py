"""The reproduction registry: a registered claim's verdict and numbers reach all three report files."""

from __future__ import annotations

import json

import pytest

from prefalign.reproduce.claims import CLAIMS, ClaimResult, Verdict, claim, run_claim


def test_a_claim_writes_json_markdown_and_html(tmp_path):
    @claim("toy-claim", paper="A toy (arXiv:0000.00000)", paper_claim="x rises")
    def run(out_dir, quick):
        return ClaimResult(Verdict.INCONCLUSIVE, measured="x: 1.0 -> 1.01", reason="rise 0.01 < noise 0.05",
                           numbers={"rise": 0.01}, table=[{"step": 0, "x": 1.0}, {"step": 1, "x": 1.01}])

    try:
        result = run_claim("toy-claim", tmp_path, quick=True)
        record = json.loads((tmp_path / "result.json").read_text())
        assert result.verdict is Verdict.INCONCLUSIVE
        assert record["verdict"] == "INCONCLUSIVE" and record["numbers"] == {"rise": 0.01} and record["quick"]
        md = (tmp_path / "report.md").read_text()
        assert "# toy-claim: INCONCLUSIVE" in md and "| 1 | 1.01 |" in md
        assert "<b>INCONCLUSIVE</b>" in (tmp_path / "report.html").read_text()
        with pytest.raises(ValueError, match="twice"):
            claim("toy-claim", "p", "c")(run)
    finally:
        CLAIMS.pop("toy-claim", None)
    with pytest.raises(ValueError, match="unknown reproduction"):
        run_claim("toy-claim", tmp_path)
