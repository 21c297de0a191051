"""Knob parsing, the knob listing and --check-knobs: every bad-value path, and none of it imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import TRAIN_PY, clean_env, knobs, run_train

Knob = knobs.Knob
FLOAT = Knob(0.04, min=0.0)
INT = Knob(8, 4, 2, min=1, max=128)
BOOL = Knob(True, False)
CHOICE = Knob("auto", choices=("auto", "gpu", "cpu", "tiny"))
FREE_TEXT = Knob("real")


@pytest.mark.parametrize("knob, text, expected", [
    (FLOAT, "0.05", 0.05),
    (FLOAT, " 1e-3 ", 1e-3),
    (FLOAT, "0", 0.0),  # min is inclusive
    (INT, "1", 1),
    (INT, "128", 128),  # max is inclusive
    (INT, "+4", 4),
    (BOOL, "1", True), (BOOL, "TRUE", True), (BOOL, "yes", True), (BOOL, "on", True),
    (BOOL, "0", False), (BOOL, "False", False), (BOOL, "no", False), (BOOL, "off", False),
    (CHOICE, "tiny", "tiny"),
    (FREE_TEXT, "anything", "anything"),
])
def test_good_values_parse(knob, text, expected):
    value = knobs.parse_value("K", knob, text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("knob, text, phrase", [
    (FLOAT, "abc", "is not a float"),
    (FLOAT, "", "is not a float"),
    (FLOAT, "nan", "is not a finite float"),
    (FLOAT, "inf", "is not a finite float"),
    (FLOAT, "-0.1", "is below the minimum 0.0"),
    (INT, "4.5", "is not an int"),
    (INT, "four", "is not an int"),
    (INT, "-1", "is below the minimum 1"),
    (INT, "0", "is below the minimum 1"),
    (INT, "129", "is above the maximum 128"),
    (BOOL, "maybe", "is not a bool"),
    (BOOL, "2", "is not a bool"),
    (CHOICE, "gpux", "is not one of auto, gpu, cpu, tiny"),
    (CHOICE, "GPU", "is not one of auto, gpu, cpu, tiny"),
])
def test_bad_values_name_knob_value_and_what_is_allowed(knob, text, phrase):
    with pytest.raises(knobs.KnobError) as caught:
        knobs.parse_value("K", knob, text)
    message = str(caught.value)
    assert message.startswith(f"knob K={text!r} ")
    assert phrase in message
    assert "(e.g. K=" in message  # an example of a good value
    assert "\n" not in message


def test_env_overrides_preset_defaults_and_empty_means_unset():
    declared = {"PRESET": Knob("auto", choices=("auto", "gpu", "cpu", "tiny")),
                "DEVICE": Knob("auto", choices=("auto", "cuda", "cpu")),
                "DEPTH": INT, "LR": FLOAT}
    values = knobs.resolve(declared, {"PRESET": "tiny", "DEVICE": "cpu", "LR": "0.5", "DEPTH": " "})
    assert values == {"PRESET": "tiny", "DEVICE": "cpu", "DEPTH": 2, "LR": 0.5}
    assert knobs.resolve(declared, {"DEVICE": "cpu"})["PRESET"] == "cpu"  # auto without CUDA -> cpu


# ---------------------------------------------------------------------------- the real train.py

@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    """An environment in which `import torch` fails, to prove the knob paths never import it."""
    fake = tmp_path_factory.mktemp("no-torch")
    (fake / "torch").mkdir()
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch must not be imported here')\n")
    return clean_env(PYTHONPATH=str(fake))


def test_knob_listing_is_json_without_torch(no_torch_env):
    result = run_train("--knobs", env=no_torch_env)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)["knobs"]
    required = {"PRESET", "DEVICE", "DATA", "TIME_BUDGET", "DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MAX_SEQ_LEN",
                "VOCAB_SIZE", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "MATRIX_LR", "EMBEDDING_LR",
                "UNEMBEDDING_LR", "SCALAR_LR", "WEIGHT_DECAY", "ADAM_BETA1", "ADAM_BETA2", "WARMUP_RATIO",
                "WARMDOWN_RATIO", "FINAL_LR_FRAC", "SEED", "COMPILE"}
    assert required <= set(listing)
    for name, entry in listing.items():
        assert name.isupper()
        assert entry["type"] in {"int", "float", "str", "bool"}
        assert set(entry["default"]) == {"gpu", "cpu", "tiny"}
        assert entry["help"], f"{name} has no help text"
        assert entry["choices"] is None or isinstance(entry["choices"], list)
        for preset, default in entry["default"].items():
            assert type(default).__name__ == entry["type"], (name, preset)
            if entry["min"] is not None:
                assert default >= entry["min"], (name, preset)
            if entry["max"] is not None:
                assert default <= entry["max"], (name, preset)
            if entry["choices"]:
                assert default in entry["choices"], (name, preset)
    assert listing["PRESET"]["choices"] == ["auto", "gpu", "cpu", "tiny"]
    assert listing["DEVICE"]["choices"] == ["auto", "cuda", "cpu"]
    assert listing["DEPTH"]["default"] == {"gpu": 8, "cpu": 4, "tiny": 2}
    assert listing["COMPILE"]["default"]["gpu"] is True


def test_check_knobs_answers_each_env_without_torch(no_torch_env):
    envs = [{"MATRIX_LR": "abc"}, {"DEPTH": "4"}, {"DEPTH": "-1"}, {"NOT_A_KNOB": "x"}, {},
            {"PRESET": "gpux"}, {"COMPILE": "maybe", "DEPTH": "2"}, {"WARMUP_RATIO": "1.5"}]
    result = run_train("--check-knobs", env=no_torch_env, stdin=json.dumps(envs))
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert len(answers) == len(envs)
    assert answers[1] is None and answers[3] is None and answers[4] is None  # unknown names are not errors here
    assert answers[0] == "knob MATRIX_LR='abc' is not a float; allowed: a float >= 0.0 (e.g. MATRIX_LR=0.04)"
    assert answers[2].startswith("knob DEPTH='-1' is below the minimum 1")
    assert answers[5].startswith("knob PRESET='gpux' is not one of")
    assert answers[6].startswith("knob COMPILE='maybe' is not a bool")
    assert answers[7].startswith("knob WARMUP_RATIO='1.5' is above the maximum 1")


@pytest.mark.parametrize("stdin", ["not json", '{"DEPTH": "4"}'])
def test_check_knobs_rejects_malformed_stdin(stdin, no_torch_env):
    result = run_train("--check-knobs", env=no_torch_env, stdin=stdin)
    assert result.returncode == 2
    assert "--check-knobs expects a JSON list" in result.stderr


@pytest.mark.parametrize("env, phrase", [
    ({"MATRIX_LR": "abc"}, "knob MATRIX_LR='abc' is not a float"),
    ({"DEPTH": "-1"}, "knob DEPTH='-1' is below the minimum 1"),
    ({"VOCAB_SIZE": "100000"}, "knob VOCAB_SIZE='100000' is above the maximum 65536"),
    ({"SEED": "1.5"}, "knob SEED='1.5' is not an int"),
    ({"TIME_BUDGET": "inf"}, "knob TIME_BUDGET='inf' is not a finite float"),
    ({"COMPILE": "perhaps"}, "knob COMPILE='perhaps' is not a bool"),
    ({"PRESET": "huge"}, "knob PRESET='huge' is not one of auto, gpu, cpu, tiny"),
    ({"DEVICE": "tpu"}, "knob DEVICE='tpu' is not one of auto, cuda, cpu"),
    ({"DATA": "web"}, "knob DATA='web' is not one of real, offline"),
])
def test_malformed_value_fails_at_once_before_torch(env, phrase, no_torch_env):
    result = run_train(env={**no_torch_env, **env})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(phrase), result.stderr


@pytest.mark.parametrize("env, phrase", [
    ({"PRESET": "tiny", "TOTAL_BATCH_SIZE": "1000"},
     "knob TOTAL_BATCH_SIZE=1000 is not a multiple of DEVICE_BATCH_SIZE*MAX_SEQ_LEN=16*64=1024"),
    ({"PRESET": "tiny", "HEAD_DIM": "33"}, "knob HEAD_DIM=33 must be even"),
    ({"DEVICE": "cuda"}, "knob DEVICE='cuda' but torch sees no CUDA device"),
])
def test_inconsistent_knobs_fail_with_one_line(env, phrase):
    import torch

    if env.get("DEVICE") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_train(env=clean_env(**env))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(phrase), result.stderr


def test_unknown_flag_is_rejected_with_the_valid_ones(no_torch_env):
    result = run_train("--knbos", env=no_torch_env)
    assert result.returncode == 2
    assert "--knobs, --check-knobs, --print-resolved" in result.stderr


def test_print_resolved_applies_preset_and_overrides():
    result = run_train("--print-resolved", env=clean_env(PRESET="tiny", MATRIX_LR="0.07"))
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["PRESET"] == "tiny" and values["DEPTH"] == 2 and values["MATRIX_LR"] == 0.07
    assert values["DEVICE"] in ("cpu", "cuda")


def test_listing_works_from_another_cwd(tmp_path, no_torch_env):
    result = subprocess.run([sys.executable, str(TRAIN_PY), "--knobs"], cwd=tmp_path, env=no_torch_env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "MATRIX_LR" in result.stdout


def test_check_knobs_catches_combinations_under_each_preset_they_may_run_with():
    import json
    import subprocess
    import sys
    from pathlib import Path

    train_py = Path(__file__).resolve().parents[2] / "train" / "train.py"
    envs = [{"DEVICE_BATCH_SIZE": "48"}, {"HEAD_DIM": "33"}, {"TOTAL_BATCH_SIZE": "1000"}, {"DEPTH": "3"},
            {"PRESET": "tiny", "TOTAL_BATCH_SIZE": "2048"}, {"PRESET": "cpu", "DEVICE_BATCH_SIZE": "48"}]
    out = subprocess.run([sys.executable, str(train_py), "--check-knobs"], input=json.dumps(envs),
                         capture_output=True, text=True, check=True).stdout
    answers = json.loads(out)
    assert "TOTAL_BATCH_SIZE" in answers[0] and "DEVICE_BATCH_SIZE*MAX_SEQ_LEN" in answers[0]
    assert "HEAD_DIM=33 must be even" in answers[1]
    assert "TOTAL_BATCH_SIZE=1000" in answers[2]
    assert answers[3] is None and answers[4] is None
    assert "PRESET" not in answers[5] and "48*128" in answers[5]
