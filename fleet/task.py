"""The experiment task (`experiment.yaml`) read as plain data, for backends that run it themselves.

The SkyPilot backend hands the same file to `sky.Task.from_yaml`; the local backend reads the
fields below and runs `setup` once per machine and `run` once per experiment, with the task's
envs overlaid by the experiment's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fleet.errors import InputError


@dataclass(frozen=True)
class TaskSpec:
    path: Path
    setup: str = ""
    run: str = ""
    envs: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    accelerators: tuple[str, ...] = ()  # the accelerators the task accepts, e.g. ("H100", "H200")


def _accelerator_names(resources: object) -> tuple[str, ...]:
    if not isinstance(resources, dict):
        return ()
    acc = resources.get("accelerators")
    if isinstance(acc, dict):
        return tuple(str(k) for k in acc)
    if isinstance(acc, list):
        return tuple(str(a).split(":")[0] for a in acc)
    if isinstance(acc, str):
        return (acc.split(":")[0],)
    return ()


def read_task_yaml(path: Path) -> dict:
    """The task file as a mapping, checked for what every backend needs (a `run:` script)."""
    if not path.exists():
        raise InputError(f"task file {path} does not exist; set `task:` in fleet.yaml or create experiment.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data.get("run"):
        raise InputError(f"{path}: a task needs a `run:` script (see experiment.yaml in the skyfleet repo)")
    return data


def load_task(path: Path) -> TaskSpec:
    data = read_task_yaml(path)
    envs = {str(k): "" if v is None else str(v) for k, v in (data.get("envs") or {}).items()}
    return TaskSpec(
        path=path,
        setup=str(data.get("setup") or ""),
        run=str(data["run"]),
        envs=envs,
        workdir=data.get("workdir"),
        accelerators=_accelerator_names(data.get("resources")),
    )
