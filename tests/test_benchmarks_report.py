"""benchmarks/report.py: every script on the page, its goals table and its sections."""

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Loaded from its file (benchmarks/ is no package); registered, as dataclasses need.
_spec = importlib.util.spec_from_file_location(
    "benchmarks_report", ROOT / "benchmarks" / "report.py"
)
report = sys.modules.setdefault("benchmarks_report", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(report)

OUTPUT = """\
machine: 2 cores (a CPU), 8.0 GiB RAM
training steps/s, stage 2
| backbone   | input | batch | mode    | bn img/s | nobn img/s | nobn/bn | goal    | met |
|------------|-------|-------|---------|----------|------------|---------|---------|-----|
| reactnet_a | 32x32 | 64    | default | 130.3    | 119.0      | 0.914   | >= 1.00 | no  |
| reactnet18 | 32x32 | 64    | default | 388.7    | 352.5      | 1.020   | -       | -   |

| backbone   | input   | threads | bn ms | nobn ms | nobn/bn | goal    | met | bn state |
|------------|---------|---------|-------|---------|---------|---------|-----|----------|
| reactnet18 | 224x224 | 2       | 62.1  | 62.0    | 0.999   | <= 1.00 | yes | 129      |

| model | step ms |
|-------|---------|
| x     | 1.0     |
"""


def test_every_script_has_a_section_with_arguments_it_defines():
    scripts = {path.stem for path in (ROOT / "benchmarks").glob("*.py")} - {"common", "report"}
    assert set(report.BY_SCRIPT) == scripts
    common = (ROOT / "benchmarks" / "common.py").read_text()
    for benchmark in report.BENCHMARKS:
        source = (ROOT / "benchmarks" / f"{benchmark.script}.py").read_text() + common
        for flag in (*benchmark.args, *benchmark.quick_args):
            if flag.startswith("--"):
                assert f'"{flag}"' in source, (benchmark.script, flag)
        assert benchmark.command(True)[:2] == ["python", f"benchmarks/{benchmark.script}.py"]


def test_goal_rows_are_the_rows_with_a_goal_named_by_their_cells():
    assert report.goal_rows(OUTPUT) == [
        ("reactnet_a 32x32 batch 64 default", "0.914", ">= 1.00", "no"),
        ("reactnet18 224x224 threads 2", "0.999", "<= 1.00", "yes"),
    ]


def test_the_page_shows_each_command_above_its_verbatim_output(monkeypatch):
    monkeypatch.setattr(report, "cpu_model", lambda: "Some CPU 9000")
    benchmark = report.BY_SCRIPT["train_throughput"]
    runs = [
        report.Run(benchmark, benchmark.command(True), OUTPUT, 0, "", 1.0),
        report.Run(report.BY_SCRIPT["agc_overhead"], ["python", "x"], "out\n", 3, "Boom", 1.0),
    ]
    text = report.page(runs, quick=True, only=None)
    assert "CPU: Some CPU 9000" in text
    assert f"tensorflow {importlib.metadata.version('tensorflow')}" in text
    assert "`python benchmarks/report.py --quick`" in text
    command = "$ " + " ".join(benchmark.command(True))
    assert f"## 1. Training throughput\n\n{benchmark.about}\n\n```\n{command}\n{OUTPUT}```" in text
    assert "```\n$ python x\nout\n(exit code 3; the end of its stderr:)\nBoom\n```" in text
    goals = [line for line in text.splitlines() if line.startswith("| [")]
    assert goals == [
        "| [1. Training throughput](#1-training-throughput) | reactnet_a 32x32 batch 64 default "
        "| 0.914 | >= 1.00 | no |",
        "| [1. Training throughput](#1-training-throughput) | reactnet18 224x224 threads 2 "
        "| 0.999 | <= 1.00 | yes |",
    ]


@pytest.mark.parametrize("benchmark", report.BENCHMARKS, ids=lambda b: b.script)
def test_section_anchors_are_the_headings_slugs(benchmark):
    """The goals table's links: GitHub's and MkDocs' slug of the heading (lower case, no
    punctuation, spaces as dashes)."""
    slug = report.anchor(7, benchmark)
    assert slug.startswith("7-") and re.fullmatch(r"[a-z0-9_-]+", slug)
    assert slug.replace("-", "") == re.sub(r"[^a-z0-9_]", "", f"7{benchmark.title.lower()}")
