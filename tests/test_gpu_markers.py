"""The conftest hook that skips GPU tests on a machine without enough GPUs, whatever `-m` expression is given."""

from __future__ import annotations

import pytest
import torch


pytest_plugins = ["pytester"]

TESTS = """
import pytest

@pytest.mark.gpu
def test_one_gpu():
    pass

@pytest.mark.multi_gpu
def test_two_gpus():
    pass

@pytest.mark.slow
@pytest.mark.gpu
def test_slow_gpu():
    pass

def test_cpu():
    pass
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the inner runs need no plugin (and start 50x faster)
    # The inner run's conftest is this suite's hook itself (no other conftest, no setup.cfg addopts).
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    pytester.makepyfile(test_marked=TESTS)
    return pytester


ONE = "*SKIPPED*test_marked.py:*: @gpu needs 1 CUDA GPU(s); this machine has 0"
TWO = "*SKIPPED*test_marked.py:*: @multi_gpu needs 2 CUDA GPU(s); this machine has {}"


@pytest.mark.parametrize(
    "gpus, args, outcomes, reasons",
    [
        (0, ["-m", "not slow"], {"passed": 1, "skipped": 2, "deselected": 1}, [ONE, TWO.format(0)]),
        (0, [], {"passed": 1, "skipped": 3}, [ONE, TWO.format(0)]),
        (0, ["-m", "gpu"], {"skipped": 2, "deselected": 2}, [ONE]),
        (0, ["-m", "gpu or multi_gpu"], {"skipped": 3, "deselected": 1}, [ONE, TWO.format(0)]),
        (1, ["-m", "not slow"], {"passed": 2, "skipped": 1, "deselected": 1}, [TWO.format(1)]),
        (1, [], {"passed": 3, "skipped": 1}, [TWO.format(1)]),
        (2, ["-m", "not slow"], {"passed": 3, "deselected": 1}, []),
    ],
)
def test_gpu_tests_skip_with_a_reason_without_enough_gpus(suite, monkeypatch, gpus, args, outcomes, reasons):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    result = suite.runpytest_inprocess("-p", "no:cacheprovider", "-rs", *args)
    result.assert_outcomes(**outcomes)
    for reason in reasons:
        result.stdout.fnmatch_lines([reason])
