"""benchmarks/run.py's README writer: tables replace the text between their markers, and a GPU's first results get
a heading and markers of their own before the GPU anchor (once: a second write replaces them)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import run  # noqa: E402


def _results(machine, device, table):
    return {"machine": machine, "cpu": "Some CPU", "device": device, "threads": 2, "torch": "2.13.0",
            "date": "2026-12-04", "benchmarks": {"bench_adam": {"table": table, "notes": "n"}}}


def test_cpu_table_replaces_its_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- BENCH:cpu-x:bench_adam -->\nold\n<!-- /BENCH -->\nb\n<!-- GPU-RESULTS -->\n")
    run.update_readme(_results("cpu-x", "cpu", "| new |"), path=str(readme))
    text = readme.read_text()
    assert "old" not in text and text.count("| new |") == 1
    assert text.startswith("a\n<!-- BENCH:cpu-x:bench_adam -->\n_Some CPU, 2 threads")
    assert text.endswith("<!-- /BENCH -->\nb\n<!-- GPU-RESULTS -->\n")
    # A CPU without markers is not added anywhere.
    run.update_readme(_results("cpu-y", "cpu", "| other |"), path=str(readme))
    assert readme.read_text() == text


def test_gpu_tables_get_a_heading_once(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("### GPU results\n\n<!-- GPU-RESULTS -->\ntail\n")
    run.update_readme(_results("nvidia-h200", "NVIDIA H200", "| first |"), path=str(readme))
    run.update_readme(_results("nvidia-h200", "NVIDIA H200", "| second |"), path=str(readme))
    text = readme.read_text()
    assert text.count("#### NVIDIA H200: bench_adam") == 1
    assert "| first |" not in text and text.count("| second |") == 1
    assert text.index("| second |") < text.index("<!-- GPU-RESULTS -->") and text.endswith("tail\n")
