"""The report writer: one call per section; Markdown, self-contained HTML, JSON and PNGs swapped in whole."""

from __future__ import annotations

import base64
import json
import pytest
import torch

from prefalign.diagnostics.report import Report, markdown_html


def draw(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def test_sections_become_markdown_html_json_and_pngs(tmp_path):
    out = tmp_path / "report"
    r = Report("Diagnostics <of> run", out)
    png = r.figure_path("curve.png")
    draw(png)
    r.add("Ranking accuracy", "The policy ranks **most** pairs wrongly.\n\n- one\n- two",
          table=[{"model": "policy", "accuracy": 0.25}, {"model": "reference", "accuracy": float("nan")}],
          figures=[png], data={"acc": torch.tensor(0.25), "nan": float("nan"), "list": (1, 2)})
    elsewhere = tmp_path / "drawn-elsewhere.png"
    draw(elsewhere)
    r.add("Second", "text", figures=[elsewhere])
    assert r.write() == out
    md = (out / "report.md").read_text()
    assert "## Ranking accuracy" in md and "| model | accuracy |" in md and "| policy | 0.25 |" in md
    assert "| reference | - |" in md and "![curve](curve.png)" in md
    page = (out / "report.html").read_text()
    assert "<strong>most</strong>" in page and "<li>one</li>" in page and "&lt;of&gt;" in page
    assert "http" not in page and "src=\"curve.png\"" not in page  # nothing external
    embedded = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(embedded) == (out / "curve.png").read_bytes()
    data = json.loads((out / "report.json").read_text())
    assert data["sections"][0]["data"] == {"acc": 0.25, "nan": None, "list": [1, 2]}
    assert data["sections"][1]["figures"] == ["drawn-elsewhere.png"] and (out / "drawn-elsewhere.png").exists()
    assert not list(tmp_path.glob(".report.*"))  # no staging or old folders left behind


def test_rewrite_replaces_the_old_report_and_missing_figure_is_an_error(tmp_path):
    out = tmp_path / "r"
    first = Report("one", out)
    first.add("A", "a")
    first.write()
    second = Report("two", out)
    with pytest.raises(FileNotFoundError, match="section 'B'.*never.png"):
        second.add("B", figures=[second.figure_path("never.png")])
    with pytest.raises(ValueError, match="plain file names"):
        second.figure_path("../x.png")
    second.add("C", "c")
    second.write()
    assert json.loads((out / "report.json").read_text())["title"] == "two"


def test_markdown_subset():
    assert markdown_html("a *b* `c`\nd") == "<p>a <em>b</em> <code>c</code> d</p>"
