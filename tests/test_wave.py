from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from fleet.core.expand import (
    check_size,
    config_key,
    count_experiments,
    env_value,
    expand_wave,
)
from fleet.core.wave import WaveFile, load_wave, wave_json_schema
from fleet.core.wave_spec import WaveSpec
from fleet.errors import InputError

TIERS = ["screen", "validate"]

EXAMPLE = """\
name: lr-wd
tier: screen
seeds: 1
description: learning rate vs weight decay
max_gpu_hours: 4
env: {TIME_BUDGET: 300}
grid:
  MATRIX_LR: [0.03, 0.04, 0.05]
  WEIGHT_DECAY: [0.0, 0.1]
experiments:
  - {description: baseline}
  - {MATRIX_LR: 0.06, description: hot}
"""


def write(tmp_path: Path, text: str, name: str = "wave.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str, name: str = "wave.yaml") -> WaveSpec:
    return load_wave(write(tmp_path, text, name), TIERS)


def rejection(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as info:
        load_text(tmp_path, text)
    return str(info.value)


# ---- rejections: each names the file, the field path and the bad value ---------------------------

REJECTIONS = [
    # (wave text, field path, shown value or None, a word of what is allowed)
    ("name: Bad Name\n", "`name`", "'Bad Name'", "lowercase"),
    ("name: " + "a" * 41 + "\n", "`name`", "'aaaa", "40 characters"),
    ("name: -x\n", "`name`", "'-x'", "not at either end"),
    ("tier: scren\n", "`tier`", "'scren'", "did you mean screen? configured tiers: screen, validate"),
    ("tier: gpu-big\n", "`tier`", "'gpu-big'", "configured tiers: screen, validate"),
    ("seeds: 0\n", "`seeds`", "= 0", "positive integer"),
    ("seeds: -1\n", "`seeds`", "= -1", "positive integer"),
    ("seeds: 2.5\n", "`seeds`", "= 2.5", "positive integer"),
    ("seeds: three\n", "`seeds`", "'three'", "positive integer"),
    ("seeds: true\n", "`seeds`", "True", "positive integer"),
    ("max_gpu_hours: -1\n", "`max_gpu_hours`", "= -1", "positive number"),
    ("max_gpu_hours: lots\n", "`max_gpu_hours`", "'lots'", "positive number"),
    ("description: [a, b]\n", "`description`", "['a', 'b']", "text"),
    ("tiers: screen\n", "`tiers`", None, "did you mean `tier`? valid keys: name, tier, seeds"),
    ("gird: {A: [1]}\n", "`gird`", None, "valid keys: name, tier, seeds, description, max_gpu_hours, env, grid"),
    ("env: [1, 2]\n", "`env`", "[1, 2]", "mapping of knob names"),
    ("env: {TIME_BUDGET: [[1, 2]]}\n", "`env.TIME_BUDGET`", "[[1, 2]]", "flat list (a tuple knob's), not a list of lists"),
    ("env: {ADAM_BETAS: []}\n", "`env.ADAM_BETAS`", "[]", "not be an empty list"),
    ("env: {TIME_BUDGET: null}\n", "`env.TIME_BUDGET`", "None", "not an empty value"),
    ("env: {TIME_BUDGET: .inf}\n", "`env.TIME_BUDGET`", "inf", "finite number"),
    ("env: {time_budget: 3}\n", "`env.time_budget`", None, "UPPER_CASE"),
    ("env: {SEED: 3}\n", "`env.SEED`", None, "set `seeds: N` instead"),
    ("grid: {}\n", "`grid`", None, "is empty"),
    ("grid: [1, 2]\n", "`grid`", "[1, 2]", "mapping of knob names to non-empty lists"),
    ("grid: {MATRIX_LR: []}\n", "`grid.MATRIX_LR`", None, "empty list; give at least one value"),
    ("grid: {MATRIX_LR: 0.04}\n", "`grid.MATRIX_LR`", "0.04", "must be a list of values"),
    ("grid: {MATRIX_LR: [0.04, [[1]]]}\n", "`grid.MATRIX_LR[1]`", "[[1]]", "not a list of lists"),
    ("grid: {MATRIX_LR: [0.04, {a: 1}]}\n", "`grid.MATRIX_LR[1]`", "{...}", "not a mapping"),
    ("grid: {MATRIX_LR: [.nan]}\n", "`grid.MATRIX_LR[0]`", "nan", "finite number"),
    ("grid: {SEED: [0, 1]}\n", "`grid.SEED`", None, "SEED is set by the fleet"),
    ("grid: {matrix-lr: [1]}\n", "`grid.matrix-lr`", None, "not a knob name"),
    ("experiments: []\n", "`experiments`", None, "empty list"),
    ("experiments: {A: 1}\n", "`experiments`", "{...}", "list of mappings"),
    ("experiments:\n  - 5\n", "`experiments[0]`", "= 5", "must be a mapping"),
    ("experiments:\n  - {descripton: x}\n", "`experiments[0].descripton`", None, "did you mean `description`?"),
    ("experiments:\n  - {description: 5}\n", "`experiments[0].description`", "= 5", "text"),
    ("experiments:\n  - {}\n  - {SEED: 1}\n", "`experiments[1].SEED`", None, "set `seeds: N` instead"),
    ("experiments:\n  - {MATRIX_LR: [{a: 1}]}\n", "`experiments[0].MATRIX_LR`", "[{'a': 1}]", "not a list of mappings"),
    ("experiments:\n  - {code: main, patch: x.diff}\n", "`experiments[0]`", None, "give `code` or `patch`, not both"),
    ("experiments:\n  - {code: 5}\n", "`experiments[0].code`", "= 5", "string"),
]


@pytest.mark.parametrize("text, where, value, allowed", REJECTIONS, ids=[r[1] + ":" + r[0][:20] for r in REJECTIONS])
def test_each_rejection_names_file_field_value_and_what_is_allowed(tmp_path, text, where, value, allowed):
    message = rejection(tmp_path, text)
    assert message.count("\n") == 0, f"one problem, one line: {message}"
    assert str(tmp_path / "wave.yaml") in message
    assert where in message
    if value is not None:
        assert value in message
    assert allowed in message


def test_every_problem_is_reported_one_line_each_with_its_line_number(tmp_path):
    message = rejection(tmp_path, "name: X\nseeds: 0\nenv: {a: 1}\ngrid: {B: []}\n")
    lines = message.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{tmp_path / 'wave.yaml'}:1: `name`")
    assert lines[1].startswith(f"{tmp_path / 'wave.yaml'}:2: `seeds`")
    assert ":3: `env.a`" in lines[2]
    assert ":4: `grid.B`" in lines[3]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.yaml: wave file not found"):
        load_wave(tmp_path / "nope.yaml", TIERS)


def test_a_directory_is_not_a_wave_file(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_wave(tmp_path, TIERS)


def test_bad_yaml_names_the_line(tmp_path):
    message = rejection(tmp_path, "name: x\ngrid:\n  A: [1, 2\n  B: [3]\n")
    assert "not valid YAML" in message
    assert "started on line 3" in message
    assert message.startswith(str(tmp_path / "wave.yaml") + ":")


def test_tab_indentation_is_bad_yaml_with_a_line(tmp_path):
    message = rejection(tmp_path, "name: x\ngrid:\n\tA: [1]\n")
    assert f"{tmp_path / 'wave.yaml'}:3: not valid YAML" in message


def test_not_a_mapping(tmp_path):
    message = rejection(tmp_path, "- a\n- b\n")
    assert "must be a mapping of wave settings, got a list" in message
    assert "valid keys: name, tier" in message


def test_empty_file(tmp_path):
    assert "the file is empty" in rejection(tmp_path, "")


def test_not_utf8(tmp_path):
    path = tmp_path / "wave.yaml"
    path.write_bytes(b"name: x\nenv: {A: \xff\xfe}\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_wave(path, TIERS)


def test_duplicate_key_is_refused_not_silently_dropped(tmp_path):
    message = rejection(tmp_path, "grid:\n  MATRIX_LR: [1]\n  MATRIX_LR: [2]\n")
    assert ":3: `grid.MATRIX_LR` appears twice" in message


def test_unknown_tier_lists_the_configured_ones(tmp_path):
    path = write(tmp_path, "tier: validate\n")
    with pytest.raises(InputError, match=r"configured tiers: fast, slow"):
        load_wave(path, ["fast", "slow"])


# ---- what a valid file becomes ---------------------------------------------------------------------


def test_example_loads(tmp_path):
    spec = load_text(tmp_path, EXAMPLE)
    assert spec.name == "lr-wd" and spec.tier == "screen" and spec.seeds == 1
    assert spec.max_gpu_hours == 4.0
    assert spec.env == {"TIME_BUDGET": 300}
    assert spec.grid == {"MATRIX_LR": [0.03, 0.04, 0.05], "WEIGHT_DECAY": [0.0, 0.1]}
    assert [e.description for e in spec.experiments] == ["baseline", "hot"]
    assert spec.experiments[1].overrides == {"MATRIX_LR": 0.06}
    assert spec.warnings == ()
    json.dumps(spec.to_json())


def test_defaults_name_from_file_and_tier_screen(tmp_path):
    spec = load_text(tmp_path, "env: {TIME_BUDGET: 30}\n", name="My Quick Wave.yaml")
    assert spec.name == "my-quick-wave"
    assert spec.tier == "screen" and spec.seeds is None


def test_grid_expansion_order_labels_and_envs(tmp_path):
    planned = expand_wave(load_text(tmp_path, EXAMPLE), default_seeds=3)
    assert len(planned) == 8  # 3x2 grid + 2 explicit, seeds: 1 in the file beats the tier's 3
    assert [p.label for p in planned[:3]] == [
        "MATRIX_LR=0.03 WEIGHT_DECAY=0.0",
        "MATRIX_LR=0.03 WEIGHT_DECAY=0.1",
        "MATRIX_LR=0.04 WEIGHT_DECAY=0.0",
    ]
    assert planned[0].config == {"TIME_BUDGET": "300", "MATRIX_LR": "0.03", "WEIGHT_DECAY": "0.0"}
    assert planned[6].config == {"TIME_BUDGET": "300"} and planned[6].label == "baseline"
    assert planned[7].config == {"TIME_BUDGET": "300", "MATRIX_LR": "0.06"} and planned[7].description == "hot"
    assert all("SEED" not in p.config for p in planned)
    assert planned[0].envs == {**planned[0].config, "SEED": "0"}
    assert planned[5].origins == {
        "TIME_BUDGET": "env.TIME_BUDGET", "MATRIX_LR": "grid.MATRIX_LR[2]", "WEIGHT_DECAY": "grid.WEIGHT_DECAY[1]"
    }
    assert planned[7].origins["MATRIX_LR"] == "experiments[1].MATRIX_LR"


def test_seeds_default_to_the_tier_and_run_config_major(tmp_path):
    spec = load_text(tmp_path, "grid: {A: [1, 2]}\n")
    planned = expand_wave(spec, default_seeds=3)
    assert [(p.config["A"], p.seed) for p in planned] == [("1", 0), ("1", 1), ("1", 2), ("2", 0), ("2", 1), ("2", 2)]
    assert len({p.config_key for p in planned}) == 2


def test_env_only_is_one_configuration(tmp_path):
    planned = expand_wave(load_text(tmp_path, "env: {TIME_BUDGET: 30}\nseeds: 2\n"), 1)
    assert [(p.config, p.seed, p.label) for p in planned] == [({"TIME_BUDGET": "30"}, 0, "base"), ({"TIME_BUDGET": "30"}, 1, "base")]


def test_experiments_without_grid_override_env(tmp_path):
    spec = load_text(tmp_path, "env: {A: 1, B: x}\nexperiments:\n  - {A: 2}\n  - {B: y, description: why}\n")
    planned = expand_wave(spec, 1)
    assert [p.config for p in planned] == [{"A": "2", "B": "x"}, {"A": "1", "B": "y"}]
    assert [p.label for p in planned] == ["A=2 B=x", "why"]


@pytest.mark.parametrize(
    "value, text",
    [(True, "1"), (False, "0"), (0.1, "0.1"), (1e-05, "1e-05"), (3, "3"), (300.0, "300.0"), ("cpu", "cpu"), (2**40, "1099511627776")],
)
def test_env_values(value, text):
    assert env_value(value) == text


def test_yaml_values_become_env_strings(tmp_path):
    spec = load_text(tmp_path, "env: {COMPILE: false, FLAG: yes, LR: 0.1, WD: 1.0e-3, NAME: gpu, N: 7}\n")
    assert expand_wave(spec, 1)[0].config == {
        "COMPILE": "0", "FLAG": "1", "LR": "0.1", "WD": "0.001", "NAME": "gpu", "N": "7"
    }


def test_config_key_is_stable_across_waves_and_order(tmp_path):
    a = expand_wave(load_text(tmp_path, "name: a\nenv: {B: 2}\ngrid: {A: [1]}\n", "a.yaml"), 1)[0]
    b = expand_wave(load_text(tmp_path, "name: b\nexperiments:\n  - {A: 1, B: 2, description: x}\n", "b.yaml"), 1)[0]
    assert a.config_key == b.config_key
    assert a.config_key == config_key({"B": "2", "A": "1"}) == config_key({"A": "1", "B": "2", "SEED": "4"})
    assert config_key({"A": "1"}) != config_key({"A": "1.0"})
    assert len(a.config_key) == 12 and config_key({}) == "4f53cda18c2b"


def test_duplicates_are_run_once_with_a_warning(tmp_path):
    text = """\
        grid: {A: [1, 2, 1]}
        experiments:
          - {A: 2, description: the second}
          - {A: 3}
          - {A: 3}
        """
    spec = load_text(tmp_path, text)
    assert len(spec.warnings) == 3
    assert "`grid.A[2]` = 1 repeats an earlier value" in spec.warnings[0]
    assert "`experiments[0]` repeats the configuration of a grid point (A=2)" in spec.warnings[1]
    assert "`experiments[2]` repeats the configuration of `experiments[1]`" in spec.warnings[2]
    planned = expand_wave(spec, 1)
    assert [p.config["A"] for p in planned] == ["1", "2", "3"]
    assert planned[1].description == "the second"  # a duplicate's description is kept
    assert count_experiments(spec, 2) == 6 == len(expand_wave(spec, 2))


def test_count_does_not_expand_a_huge_grid(tmp_path):
    grid = {f"K{i}": list(range(10)) for i in range(8)}
    spec = WaveSpec(name="huge", grid=grid)
    assert count_experiments(spec, 2) == 2 * 10**8
    with pytest.raises(InputError, match=r"wave has 200,000,000 experiments \(limit 10,000 without --yes\)"):
        check_size(count_experiments(spec, 2))


def test_check_size():
    check_size(10_000)
    check_size(12_000, yes=True)
    with pytest.raises(InputError, match=r"wave has 12,000 experiments \(limit 10,000 without --yes\)"):
        check_size(12_000)
    with pytest.raises(InputError, match=r"limit 50 without --yes"):
        check_size(51, limit=50)


def test_schema_describes_the_file():
    schema = wave_json_schema()
    json.dumps(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(WaveFile.model_fields)
    assert schema["properties"]["name"]["maxLength"] == 40
    assert schema["required"] == []


def test_yaml_aliases_are_not_expanded_exponentially(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    message = rejection(tmp_path, "\n".join(levels) + "\n")  # 10**9 leaves if walked naively
    assert "`a0` is not a known field" in message


def test_a_huge_aliased_value_is_shown_short(tmp_path):
    levels = ["x0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "\n".join(levels) + "\nenv: *a8\ngrid: {A: *a8}\n"
    message = rejection(tmp_path, text)
    assert f"{tmp_path / 'wave.yaml'}:10: `env` = [[[...], [...], [...], [...], ...], " in message
    assert f"{tmp_path / 'wave.yaml'}:11: `grid.A[0]` = [[[...]," in message
    assert len(message.replace(str(tmp_path), "")) < 4500  # bounded, however deep the aliases nest (9 unknown keys)


@pytest.mark.parametrize("name", ["lr-_", "a--b", "x_", "-x", "a---b"])
def test_wave_names_skypilot_would_reject_are_refused(tmp_path, name):
    path = tmp_path / "w.yaml"
    path.write_text(f"name: {name}\n")
    with pytest.raises(InputError) as err:
        load_wave(path, ["screen"])
    assert "`name`" in str(err.value) and "single '-' or '_'" in str(err.value)


def test_default_names_from_odd_file_names_are_valid(tmp_path):
    import re as _re

    from fleet.core.wave import NAME_PATTERN, default_wave_name

    for stem in ("LR  sweep__v2", "--x--", "a---b", "__"):
        assert _re.match(NAME_PATTERN, default_wave_name(tmp_path / f"{stem}.yaml"))
