"""The registry of upstream patches (prefix_tuning_utils/patching.py): complete, documented, each one guarded.

A bug-fix patch names a canary, a strict-xfail test that fails the day upstream fixes the bug; a feature patch
names a test showing that plain peft, without it, falls short. Both tests themselves live next to the code they
guard (tests/test_generation_uses_prefix.py, tests/test_prefix_scope.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys

import pytest

import prefix_tuning_utils  # noqa: F401  (applies every patch)
from prefix_tuning_utils import patching
from tests.conftest import REPO


PATCHES = list(patching.PATCHES.values())


def _test_function(reference: str):
    path, _, name = reference.partition("::")
    assert re.fullmatch(r"tests/test_\w+\.py", path) and (REPO / path).is_file(), reference
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    function = getattr(module, name, None)
    assert inspect.isfunction(function), f"{reference}: no such test"
    return function


def _xfail_marks(function):
    return [mark for mark in getattr(function, "pytestmark", []) if mark.name == "xfail"]


def test_the_package_registers_its_patches():
    names = {patch.name for patch in PATCHES}
    assert {"compat.generation_prefix", "compat.cache_keyword"} <= names
    assert {"all_layer_prefix.save", "all_layer_prefix.load", "all_layer_prefix.config_key"} <= names


@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.name)
def test_every_patch_names_its_upstream_reason_and_its_test(patch):
    assert patch.kind in ("bug fix", "feature")
    # An upstream issue/PR, or the exact behaviour with the versions it was seen on.
    assert re.search(r"#\d+|\d+\.\d+", patch.upstream), patch.upstream
    assert patch.replacements and all(t.startswith(("peft.", "transformers.")) for t in patch.targets), patch.targets
    marks = _xfail_marks(_test_function(patch.test))
    if patch.kind == "bug fix":  # a canary: fails (XPASS) the day upstream fixes the bug
        assert marks and all(mark.kwargs.get("strict") is True for mark in marks), patch.test
        assert patch.test.split("::")[1].startswith("test_upstream_"), patch.test
    else:  # a test that plain peft, without it, falls short: it must pass
        assert not marks, patch.test


def _function(attribute):
    return getattr(attribute, "__func__", attribute)  # a classmethod's function


@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.name)
def test_every_patch_is_applied_and_undone_by_disabled(patch):
    assert patch.applied
    replaced = {(cls, name): cls.__dict__[name] for cls, name, _ in patch.replacements}
    with patching.disabled(patch.name):
        assert not patch.applied
        for (cls, name), replacement in replaced.items():
            # functools.wraps keeps the upstream function as __wrapped__: it is back in place.
            assert _function(cls.__dict__[name]) is _function(replacement).__wrapped__, (cls, name)
    assert patch.applied
    for (cls, name), replacement in replaced.items():  # re-applied: a new wrapper of the same upstream function
        assert _function(cls.__dict__[name]).__wrapped__ is _function(replacement).__wrapped__, (cls, name)


def test_no_upstream_class_is_patched_outside_the_registry():
    """Every function of this package set on a peft/transformers class is a registered patch."""
    registered = {(cls, name) for patch in PATCHES for cls, name, _ in patch.replacements}
    found = set()
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith(("peft", "transformers")):
            continue
        for cls in vars(module).values():
            if not inspect.isclass(cls) or not cls.__module__.startswith(("peft", "transformers")):
                continue
            for name, value in vars(cls).items():
                function = getattr(value, "__func__", value)
                code_module = getattr(function, "__globals__", {}).get("__name__", "")
                if code_module.startswith("prefix_tuning_utils"):
                    found.add((cls, name))
    assert found == registered


class _Upstream:
    def answer(self):
        return "upstream"


def _dummy_patch() -> patching.Patch:
    return patching.Patch(
        name="test.dummy",
        kind="feature",
        upstream="a stand-in 1.0",
        test="tests/test_patching.py::test_a_method_kept_from_before_removal_behaves_as_upstream",
        replacements=[(_Upstream, "answer", patching.calling(lambda original, self: "patched " + original(self)))],
    )


def test_a_method_kept_from_before_removal_behaves_as_upstream():
    """peft's disable_adapter() keeps bound methods on the instance: once the patch is removed they must not patch."""
    patch = _dummy_patch()
    patch.apply()
    kept = _Upstream().answer
    assert kept() == "patched upstream"
    patch.remove()
    assert kept() == "upstream" and _Upstream().answer() == "upstream"


def test_a_patch_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        patching.register(dataclasses.replace(_dummy_patch(), name=PATCHES[0].name))
