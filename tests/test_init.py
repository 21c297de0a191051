"""`fleet init`'s detection and the files it writes, for the layouts it meets."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from fleet_cli import BYO

from fleet.config import FleetConfig
from fleet.core.project_init import detect, example_wave, render_fleet_yaml, render_task
from fleet.errors import InputError
from fleet.task import load_task


def checkout(tmp_path: Path, *extra: str) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(BYO, root)
    for name in extra:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


def written(tmp_path: Path, root: Path) -> tuple[dict, dict, FleetConfig]:
    layout = detect(root)
    task_path = root / "experiment.yaml"
    task_path.write_text(render_task(layout))
    config = FleetConfig.model_validate(yaml.safe_load(render_fleet_yaml(layout)))
    return load_task(task_path).__dict__, yaml.safe_load(task_path.read_text()), config


def test_a_root_script_with_uv_lock_installs_and_runs_with_uv(tmp_path):
    root = checkout(tmp_path, "uv.lock")
    task, raw, config = written(tmp_path, root)
    assert (config.workload, config.script, config.knobs) == (".", "train.py", "constants")
    assert config.snapshot == ["*.py", "pyproject.toml", "uv.lock"] and config.metric.name == "val_bpb"
    assert "uv sync --frozen" in task["setup"] and task["setup"].rstrip().endswith("uv run --frozen prepare.py")
    assert task["run"].rstrip().endswith("uv run --frozen train.py")
    assert 'UV_PROJECT_ENVIRONMENT="${UV_PROJECT_ENVIRONMENT:-$PWD/.venv}"' in task["run"]  # one env, every snapshot
    assert raw["resources"]["accelerators"] == {"H100": 1, "H200": 1} and raw["workdir"] == "."


def test_without_uv_lock_pip_installs_the_pyproject_dependencies_off_the_local_backend(tmp_path):
    task, _, _ = written(tmp_path, checkout(tmp_path))
    assert "uv" not in task["setup"] and 'if [ "${FLEET_BACKEND:-}" != "local" ]' in task["setup"]
    assert "tomllib" in task["setup"] and "pip install --quiet -r" in task["setup"]
    assert task["run"].rstrip().endswith("python train.py")


def test_requirements_txt_is_installed_as_is(tmp_path):
    task, _, config = written(tmp_path, checkout(tmp_path, "requirements.txt"))
    assert "pip install --quiet -r requirements.txt" in task["setup"] and "tomllib" not in task["setup"]
    assert "requirements.txt" in config.snapshot


def test_a_train_directory_is_the_workload(tmp_path):
    root = tmp_path / "repo"
    (root / "train").mkdir(parents=True)
    (root / "train" / "train.py").write_text('"""answers --knobs"""\nimport sys\n')
    (root / "train" / "prepare.py").write_text("")
    layout = detect(root)
    assert (layout.workload, layout.script, layout.prepare, layout.knobs, layout.snapshot) == (
        "train", "train.py", "prepare.py", "env", None)
    assert 'else cd train; fi' in render_task(layout)


def test_a_train_directory_with_a_root_uv_lock_snapshots_the_root(tmp_path):
    root = tmp_path / "repo"
    (root / "train").mkdir(parents=True)
    (root / "train" / "train.py").write_text("LR = 0.1\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "uv.lock").write_text("")
    layout = detect(root)
    assert (layout.workload, layout.script, layout.snapshot) == (".", "train/train.py",
                                                                 ("train/**", "pyproject.toml", "uv.lock"))
    assert "uv run --frozen train/train.py" in render_task(layout)


def test_no_training_script_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"no train.py at the root .* --script"):
        detect(tmp_path)
    with pytest.raises(InputError, match="--script nope.py: no such file"):
        detect(tmp_path, "nope.py")


def test_seed_advice_and_example_wave(tmp_path):
    layout = detect(checkout(tmp_path))
    assert "-random.seed(42)" in layout.seed_diff and "+SEED = 42" in layout.seed_diff
    wave = yaml.safe_load(example_wave(layout))
    assert set(wave["grid"]) == {"MATRIX_LR", "ASPECT_RATIO"} and 0.05 in wave["grid"]["MATRIX_LR"]
    seeded = checkout(tmp_path / "s")
    train = seeded / "train.py"
    train.write_text(train.read_text().replace("DEPTH = 8 ", "SEED = 1\nDEPTH = 8 "))
    assert detect(seeded).seed_diff is None
