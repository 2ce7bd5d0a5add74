"""The ground floor (`errors`, `run_files`): importable without torch or any other third-party package, and the one
home of the package's errors and run-folder file names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from prefix_tuning_utils import errors, run_files
from tests.conftest import REPO


GROUND_FLOOR = ("errors", "run_files")
HEAVY = ("torch", "transformers", "peft", "datasets", "accelerate", "huggingface_hub", "numpy", "yaml", "sklearn")


def test_ground_floor_imports_only_the_standard_library():
    """What the fresh-interpreter test below checks, read from the source, so the default suite checks it too."""
    for name in GROUND_FLOOR:
        tree = ast.parse((REPO / "prefix_tuning_utils" / f"{name}.py").read_text())
        imported = [
            (node.module or "", node.level) if isinstance(node, ast.ImportFrom) else (alias.name, 0)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        ]
        for module, level in imported:
            top = module.split(".")[0]
            assert level == 0 and (top in sys.stdlib_module_names or top == "__future__"), (name, module, level)


@pytest.mark.slow  # starts a Python interpreter (about 0.1 s)
def test_ground_floor_imports_without_torch_in_a_fresh_interpreter():
    """`import prefix_tuning_utils` applies the patches (it imports torch, peft and transformers by design), so the
    package's own __init__ is bypassed: a bare package object stands in for it, and the ground floor's modules are
    imported from their files as they are."""
    code = f"""
import sys, types
package = types.ModuleType("prefix_tuning_utils")
package.__path__ = [{str(REPO / "prefix_tuning_utils")!r}]
sys.modules["prefix_tuning_utils"] = package
import prefix_tuning_utils.errors, prefix_tuning_utils.run_files
print(sorted(name for name in {HEAVY!r} if name in sys.modules))
print(prefix_tuning_utils.run_files.ADAPTER_WEIGHTS_FILE, prefix_tuning_utils.errors.ArgumentError.__mro__[1].__name__)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "adapter_model.safetensors ValueError"]


def test_every_error_says_when_it_is_raised_and_its_exit_code():
    classes = [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    assert sorted(cls.__name__ for cls in classes) == [
        "ArgumentError",
        "BatchFailedError",
        "HubUnavailableError",
        "PushError",
        "ServeError",
        "SettingsError",
        "TrainingDivergedError",
    ]
    for cls in classes:
        assert "Raised" in cls.__doc__, cls
        # an error of the command line says its exit code; a refusal of one HTTP request, its status
        if cls.__name__ in ("ServeError", "BatchFailedError"):
            assert "HTTP" in cls.__doc__ and "the server goes on" in cls.__doc__, cls
        else:
            assert re.search(r"[Ee]xit code [12]\b", cls.__doc__ or ""), cls


def test_old_homes_of_the_errors_still_export_them():
    from prefix_tuning_utils import arguments, hub, network, trainer

    assert arguments.ArgumentError is errors.ArgumentError
    assert network.HubUnavailableError is errors.HubUnavailableError
    assert hub.PushError is errors.PushError
    assert trainer.TrainingDivergedError is errors.TrainingDivergedError


def test_each_run_file_name_is_spelt_in_run_files_only():
    """No other module of the package spells a run-folder file name as a string literal: they import it."""
    constants = [value for key, value in vars(run_files).items() if key.isupper()]
    names = {value for value in constants if isinstance(value, str)}
    names |= {name for value in constants if isinstance(value, tuple) for name in value}
    # Also keys of the run record and of the prediction settings, where they name no file.
    names -= {run_files.BASE_MODEL_DIR, run_files.PREFIX_SCOPE_KEY}
    assert {"adapter_model.safetensors", "prefix_tuning.json", "all_layer_prefix.safetensors", "(no label)"} <= names
    offences = []
    for path in sorted((REPO / "prefix_tuning_utils").rglob("*.py")):
        if path.name == "run_files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                offences.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert offences == []
