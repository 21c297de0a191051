"""Secrets stay where they are: not in `.fleet/`, not in a job's environment unless passed through,
never copied into a snapshot through a symlink or a dotfile."""
from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from fleet_cli import make_project, teardown

from fleet.backends.skypilot import SkyPilotBackend
from fleet.config import FleetConfig
from fleet.types import JobSpec
from fleet.workspace import Workspace

SECRET = "s3cr3t-tok3n-9f8e7d6c5b4a"
OUTSIDE = "TOP-SECRET-CONTENT-from-outside-the-workload"
SEEN = ('import hashlib as _h\n'
        'print("secret_seen:", _h.sha256(os.environ["SOME_SECRET_TOKEN"].encode()).hexdigest()[:12]'
        ' if "SOME_SECRET_TOKEN" in os.environ else "none")\n')


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOME_SECRET_TOKEN", SECRET)  # in the shell that runs `fleet` (and its controller)
    runner = make_project(tmp_path, monkeypatch, capsys)
    train = runner.root / "train" / "train.py"
    train.write_text(train.read_text().replace("import time\n", "import time\n" + SEEN, 1))
    yield runner
    teardown(runner)


def files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def one_wave(fleet) -> str:
    fleet.write("one.yaml", "name: one\nenv: {TIME_BUDGET: 0.05}\nexperiments:\n  - {DEPTH: 1}\n")
    fleet.json("wave", "one.yaml", "--wait")
    code, out, _ = fleet("logs", "one-001")
    assert code == 0
    return next(line.split()[1] for line in out.splitlines() if line.startswith("secret_seen:"))


def test_a_secret_of_the_controllers_environment_reaches_neither_fleet_nor_jobs(fleet):
    assert one_wave(fleet) == "none"  # the job did not see it
    assert files_holding(fleet.root / ".fleet", SECRET) == []  # nor does any file the fleet wrote
    specs = list((fleet.root / ".fleet" / "local").glob("*/jobs/*.json"))
    assert specs and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in specs)


def test_a_secret_passed_through_reaches_the_job_and_only_owner_readable_files(fleet):
    fleet.write("fleet.yaml", "env_passthrough: [SOME_SECRET_TOKEN]\n")
    assert one_wave(fleet) == hashlib.sha256(SECRET.encode()).hexdigest()[:12]
    holding = files_holding(fleet.root / ".fleet", SECRET)
    assert holding and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in holding), holding


def test_a_bad_passthrough_name_is_refused(fleet):
    fleet.write("fleet.yaml", "env_passthrough: [not a name]\n")
    fleet.write("one.yaml", "name: one\nexperiments:\n  - {DEPTH: 1}\n")
    code, _, err = fleet("wave", "one.yaml")
    assert code == 2 and "env_passthrough" in err and "HF_TOKEN" in err


def test_a_symlink_out_of_the_workload_never_brings_its_content_into_a_snapshot(fleet, tmp_path):
    outside = tmp_path / "outside" / "credentials"
    outside.parent.mkdir()
    outside.write_text(OUTSIDE)
    (fleet.root / "train" / "creds").symlink_to(outside)
    (fleet.root / "train" / ".env").write_text(f"SOME_SECRET_TOKEN={SECRET}\n")
    fleet.write("one.yaml", "name: one\nenv: {TIME_BUDGET: 0.05}\nexperiments:\n  - {DEPTH: 1}\n")
    code, _, err = fleet("wave", "one.yaml")
    assert code == 2 and "train/creds is a symlink to" in err and ".skyignore" in err
    assert fleet.ledger.waves() == []  # nothing half-done

    (fleet.root / "train" / ".skyignore").write_text("creds\n")  # the fix the error suggests
    assert one_wave(fleet) == "none"
    assert files_holding(fleet.root / ".fleet", OUTSIDE) == []
    assert files_holding(fleet.root / ".fleet", SECRET) == []  # nor the dotfile's content


def test_sky_jobs_get_no_secret_unless_passed_through_and_then_as_task_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_SECRET_TOKEN", SECRET)
    (tmp_path / "experiment.yaml").write_text("name: e\nresources: {accelerators: {H100: 1}}\nrun: echo hi\n")
    workspace = Workspace(tmp_path).ensure()
    workspace.snapshot_dir("s1").mkdir(parents=True)
    (workspace.snapshot_dir("s1") / "run.sh").write_text("true\n")
    job = JobSpec("e-1", 1, "s1", {"LR": "0.1"}, 60.0, "H100")
    config = SkyPilotBackend(workspace, FleetConfig()).job_config("gpu-01", job)
    assert SECRET not in repr(config)
    passing = SkyPilotBackend(workspace, FleetConfig(env_passthrough=["SOME_SECRET_TOKEN"]))
    config = passing.job_config("gpu-01", job)
    assert config["secrets"] == {"SOME_SECRET_TOKEN": SECRET} and SECRET not in repr(config["envs"])
