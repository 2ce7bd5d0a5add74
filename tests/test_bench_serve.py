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
    # The model alone (--quick: batches of 4 rows): the three ways, each a positive rate, and their two ratios.
    model_rows = [line for line in result.stdout.splitlines() if line.startswith("| 4 | ")]
    assert len(model_rows) == 2, result.stdout[-3000:]  # printed as measured, and again in the final table
    cells = [cell.strip() for cell in model_rows[-1].strip("|").split("|")]
    assert len(cells) == 6 and all(float(cell) > 0 for cell in cells[1:4]), cells
    assert cells[4].endswith("x") and cells[5].endswith("x"), cells


def test_every_mode_runs_on_the_device_asked_for(tmp_path):
    """The baselines' workers and `prefix-tuning serve` get the same --device: on a GPU machine a baseline on the CPU
    against the bank on the GPU would make every ratio of the table meaningless."""
    from argparse import Namespace

    from bench_serve import Mode, mode_command

    args = Namespace(max_batch_size=64, max_wait_ms=5.0, device="cuda:1")
    used = [tmp_path / "a00", tmp_path / "a01"]
    for mode in (Mode("served alone", 1, 10, "peft"), Mode("mixed", 2, 10, "serve"), Mode("sw", 2, 10, "switching")):
        command = mode_command(args, mode, used[: mode.adapters], tmp_path)
        assert command[command.index("--device") + 1] == "cuda:1", (mode.name, command)
    serve = mode_command(args, Mode("mixed", 2, 10, "serve"), used, tmp_path)
    assert serve[1:3] == ["run_prefix_tuning.py", "serve"]
    assert (tmp_path / "2-adapters.yaml").read_text() == f"adapter:\n  a00: {used[0]}\n  a01: {used[1]}\n"
