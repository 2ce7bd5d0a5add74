"""benchmarks/gpu_check.py --tiny: the GPU readiness script runs on CPU and writes its table (it cannot rot)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from benchmarks import gpu_check
from tests.conftest import REPO


@pytest.mark.slow  # a subprocess end to end: about 10 s
def test_gpu_check_sh_tiny_writes_every_row():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    table = text.split("| what |")[-1]  # rows are printed as they come, then the whole table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0:2] for row in rows] == [
        ["| train", "8"], ["| train, --cache_encoder_outputs", "8"],
        ["| train", "16"], ["| train, --cache_encoder_outputs", "16"],
        ["| score (200 sentences)", "256"], ["| generate (200 sentences), 2 tokens written", "256"],
    ]  # fmt: skip
    for row in rows:
        speed = float(row.split(" | ")[2].replace(",", ""))
        assert speed > 0 and "GiB" in row.split(" | ")[3]
    assert re.search(r"T5 0\.\dM parameters \(tiny config\)", text)
    assert text.count("| score (200 sentences)") == 2  # printed as it goes, then the table
    assert re.search(r"score / generate rows/s: \d+\.\d\d", text)


def test_peak_throughput_is_found_from_the_device_name():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("NVIDIA L40S") == 362.0 and gpu_check.peak_tflops("NVIDIA L4") == 121.0
    assert gpu_check.peak_tflops("Some New GPU") is None
