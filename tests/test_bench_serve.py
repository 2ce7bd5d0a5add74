"""benchmarks/bench_serve.py --quick end to end (slow: it starts six servers): every mode runs, every answer is the
Python API's, the bad requests get their 4xx, every server exits 0 on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_bench_serve_quick_runs_every_mode(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "benchmarks/bench_serve.py",
        "--quick",
        "--torch_threads",
        "1",
        "--work_dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 11 and cells[1].isdigit():
            rows[cells[0]] = cells
    assert list(rows) == [
        "1 adapter, served alone", "1 adapter", "8 mixed", "64 mixed", "64, switching", "64 mixed, 20 % bad",
    ]  # fmt: skip
    for name, cells in rows.items():
        assert cells[6:9] == ["0", "0", "0"], (name, cells)  # failed, lost, wrong
        assert float(cells[3]) > 0, (name, cells)  # rows/s
    assert [rows[name][2] for name in rows] == ["96", "96", "96", "200", "96", "100"]
    assert "Failed, lost or wrong answers: 0 (goal 0: met); every server stopped by SIGTERM exited 0." in result.stdout
    # The plan is seeded: 19 of the 100 requests are bad, 11 of them answered with their 4xx, 8 clients hang up.
    assert "Under faults (100 requests, 19 bad: 11 answered with their 4xx, 8 clients hung up)" in result.stdout
    assert "every valid one answered as the Python API, the server alive" in result.stdout
