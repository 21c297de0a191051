"""Shared pieces for the train/ workload tests: one prepared offline cache per session, and helpers
to run train/train.py and experiment.yaml's scripts as a user would (subprocesses, real data)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_DIR = REPO / "train"
TRAIN_PY = TRAIN_DIR / "train.py"


def load_train_module(name: str):
    """Import train/<name>.py under a private name (train/ is a folder of scripts, not a package)."""
    module_name = f"skyfleet_train_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, TRAIN_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def train_definitions(**knob_values: str) -> SimpleNamespace:
    """The definitions of train/train.py (knobs, model, loss, optimizer: the file up to its `setup`
    section), executed with these knob values, so tests can call the real code in-process.

    train.py is a script that trains when run; its definitions come first and touch no data.
    """
    source = TRAIN_PY.read_text()
    setup = re.search(r"^# -+ setup$", source, re.M)
    assert setup, "train/train.py has no '# ---- setup' section line"
    namespace = {"__name__": "skyfleet_train_definitions", "__file__": str(TRAIN_PY)}
    saved_env, saved_argv = dict(os.environ), sys.argv
    try:
        os.environ.clear()
        os.environ.update(clean_env(**knob_values))
        sys.argv = [str(TRAIN_PY)]
        exec(compile(source[:setup.start()], str(TRAIN_PY), "exec"), namespace)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return SimpleNamespace(**namespace)


knobs = load_train_module("knobs")
prepare = load_train_module("prepare")
evaluate = load_train_module("evaluate")


def knob_names() -> list[str]:
    listing = subprocess.run([sys.executable, str(TRAIN_PY), "--knobs"], capture_output=True, text=True, check=True)
    return list(json.loads(listing.stdout)["knobs"])


_KNOB_NAMES = knob_names()


def clean_env(**overrides: str) -> dict[str, str]:
    """os.environ without any knob a developer may have exported, plus the given overrides."""
    env = {k: v for k, v in os.environ.items() if k not in _KNOB_NAMES}
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_train(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
              cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN_PY), *args], env=env if env is not None else clean_env(),
                          input=stdin, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def parse_summary(stdout: str) -> dict[str, object]:
    """The `key: value` lines after the last `---` line; numbers become int/float."""
    lines = stdout.splitlines()
    if "---" not in lines:
        raise AssertionError(f"no '---' summary line in output:\n{stdout}")
    start = len(lines) - lines[::-1].index("---")
    summary: dict[str, object] = {}
    for line in lines[start:]:
        key, sep, value = line.partition(": ")
        if not sep:
            raise AssertionError(f"summary line without 'key: value': {line!r}")
        for cast in (int, float):
            try:
                summary[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            summary[key] = value
    return summary


@pytest.fixture(scope="session")
def offline_cache(tmp_path_factory) -> Path:
    """SKYFLEET_CACHE for the whole session, with the offline data for the tiny and cpu presets."""
    path = tmp_path_factory.mktemp("skyfleet-cache")
    previous = os.environ.get("SKYFLEET_CACHE")
    os.environ["SKYFLEET_CACHE"] = str(path)
    for vocab_size in (512, 2048):
        prepare.ensure_prepared("offline", vocab_size, log=lambda message: None)
    yield path
    if previous is None:
        os.environ.pop("SKYFLEET_CACHE", None)
    else:
        os.environ["SKYFLEET_CACHE"] = previous
