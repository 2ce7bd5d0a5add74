"""Strict loading of accelerate config files (``accelerate_configs/*.yaml``).

accelerate's own loader (``load_config_from_file``) rejects unknown top-level keys, but copies the keys of the
nested sections (``fsdp_config``, ``deepspeed_config``, ...) onto the launch arguments without looking at them: a
misspelt ``fsdp_sharding_stratgy`` is silently ignored and the default used. We load with accelerate's loader and
check every nested key against the flags of ``accelerate launch`` it stands for.

    python -m prefix_tuning_utils.accelerate_config accelerate_configs/*.yaml
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import PrecisionType


__all__ = ["find_placeholders", "load_accelerate_config", "NESTED_SECTIONS"]

# Nested section -> (prefix accelerate adds to its keys, title of the `accelerate launch` argument group they
# belong to). The prefixes mirror accelerate.commands.launch._validate_launch_command.
NESTED_SECTIONS = {
    "fsdp_config": ("fsdp_", "FSDP Arguments"),
    "deepspeed_config": ("", "DeepSpeed Arguments"),
    "fp8_config": ("fp8_", "FP8 Arguments"),
    "dynamo_config": ("dynamo_", "Resource Selection Arguments"),
    "megatron_lm_config": ("", "Megatron-LM Arguments"),
    "mpirun_config": ("", "MPI Arguments"),
    "parallelism_config": ("", "ParallelismConfig Arguments"),
}
PLACEHOLDER = re.compile(r"^<.*>$")


def _launch_flags_by_group() -> dict[str, set[str]]:
    parser = launch_command_parser()
    return {group.title: {action.dest for action in group._group_actions} for group in parser._action_groups}


def _read_yaml(path: Path) -> dict:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an accelerate config must be a mapping of keys to values.")
    return raw


def find_placeholders(path: str | Path) -> list[str]:
    """Keys whose value is a ``<placeholder>`` to fill in (the multi-node template has some)."""
    raw = _read_yaml(Path(path))
    return sorted(key for key, value in raw.items() if isinstance(value, str) and PLACEHOLDER.match(value))


def load_accelerate_config(path: str | Path) -> ClusterConfig:
    """Load `path` with accelerate's loader, then reject unknown keys in nested sections and bad values.

    Raises ValueError naming the file and the keys.
    """
    path = Path(path)
    raw = _read_yaml(path)
    config = load_config_from_file(str(path))  # unknown top-level keys and distributed types fail here
    if not isinstance(config, ClusterConfig):
        raise ValueError(f"{path}: only local-machine configs (compute_environment: LOCAL_MACHINE) are shipped.")
    groups = _launch_flags_by_group()
    problems = []
    for section, (prefix, group) in NESTED_SECTIONS.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            problems.append(f"{section} must be a mapping")
            continue
        if values and group not in groups:
            raise RuntimeError(f"accelerate has no launch argument group {group!r}: update NESTED_SECTIONS.")
        for key in values:
            flag = key if key.startswith(prefix) else prefix + key
            if flag not in groups.get(group, ()):
                problems.append(f"unknown key {section}.{key}")
    precision = raw.get("mixed_precision", "no")
    if precision not in PrecisionType.list():
        problems.append(f"mixed_precision must be one of {', '.join(PrecisionType.list())}, got {precision!r}")
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}.")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check accelerate config files strictly (nested keys included).")
    parser.add_argument("files", nargs="+")
    status = 0
    for name in parser.parse_args(argv).files:
        try:
            config = load_accelerate_config(name)
        except (ValueError, OSError, yaml.YAMLError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        placeholders = find_placeholders(name)
        note = f" (template: fill in {', '.join(placeholders)})" if placeholders else ""
        print(f"ok: {name}: {config.distributed_type.value}, {config.num_processes} process(es){note}")
    return status


if __name__ == "__main__":
    sys.exit(main())
