"""Helpers for tests that drive the `fleet` CLI against a tiny workload on the local backend."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from fleet.cli.main import main
from fleet.core.ledger import Ledger

TINYWORK = Path(__file__).parent / "fixtures" / "tinywork"
SEARCHWORK = Path(__file__).parent / "fixtures" / "searchwork"  # a known optimum and a loss curve
BYO = Path(__file__).parent / "fixtures" / "byo"  # an autoresearch-like checkout: root train.py, constants
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"}


class FleetRunner:
    def __init__(self, root: Path, capsys) -> None:
        self.root = root
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str):
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.root / ".fleet" / "ledger.db")

    def wait_until(self, predicate, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.1)


def make_project(tmp_path: Path, monkeypatch, capsys, slots: str = "cpu,cpu", fixture: Path = TINYWORK) -> FleetRunner:
    root = tmp_path / "project"
    shutil.copytree(fixture, root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("FLEET_ROOT", str(root))
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", slots)
    monkeypatch.delenv("FLEET_BACKEND", raising=False)
    return FleetRunner(root, capsys)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def make_byo_project(tmp_path: Path, monkeypatch, capsys, slots: str = "cpu,cpu") -> FleetRunner:
    """The BYO fixture as a git repository with one commit on `main`, ready for `fleet init`."""
    root = tmp_path / "checkout"
    shutil.copytree(BYO, root)
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a checkout")
    monkeypatch.chdir(root)
    monkeypatch.setenv("FLEET_ROOT", str(root))
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", slots)
    monkeypatch.delenv("FLEET_BACKEND", raising=False)
    return FleetRunner(root, capsys)


def teardown(fleet: FleetRunner) -> None:
    fleet("down", "--all", "-y")


def load_script(path: Path, name: str) -> ModuleType:
    """A script that is not a package module (a benchmark, a fixture's train.py) imported as `name`; it
    is registered first, since dataclasses look their module up while being defined."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
