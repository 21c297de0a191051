from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from fleet.core.expand import PlannedExperiment, expand_wave, interleave_baseline
from fleet.core.knobs import (
    canonical_config,
    canonicalize,
    check_wave_knobs,
    load_knob_listing,
    parse_knob_listing,
    unknown_knob_errors,
)
from fleet.core.wave import load_wave
from fleet.core.wave_spec import WaveSpec
from fleet.errors import InputError

# A stand-in for train/train.py that speaks the knob contract (and nothing else).
FAKE_WORKLOAD = '''\
import json, sys

KNOBS = {
    "MATRIX_LR": {"type": "float", "default": {"gpu": 0.04, "cpu": 0.02}, "help": "Muon lr", "min": 0.0},
    "WEIGHT_DECAY": {"type": "float", "default": {"gpu": 0.0, "cpu": 0.0}, "help": "decoupled wd", "min": 0.0},
    "DEPTH": {"type": "int", "default": {"gpu": 8, "cpu": 2}, "help": "layers", "min": 1, "max": 64},
    "DEVICE": {"type": "str", "default": {"gpu": "auto", "cpu": "auto"}, "help": "", "choices": ["auto", "cpu", "cuda"]},
    "TIME_BUDGET": {"type": "float", "default": {"gpu": 300, "cpu": 20}, "help": "seconds"},
    "SEED": {"type": "int", "default": {"gpu": 0, "cpu": 0}, "help": "seed"},
}

def check(env):
    for name, value in env.items():
        spec = KNOBS[name]
        try:
            number = {"float": float, "int": int, "str": str}[spec["type"]](value)
        except ValueError:
            return f"{name}={value!r}: must be a {spec['type']}"
        if "min" in spec and number < spec["min"]:
            return f"{name}={value!r}: must be >= {spec['min']}"
        if "choices" in spec and number not in spec["choices"]:
            return f"{name}={value!r}: must be one of {spec['choices']}"
    return None

if sys.argv[1:] == ["--knobs"]:
    print("warming up the tokenizer...")  # chatter before the JSON must be tolerated
    print(json.dumps({"knobs": KNOBS}))
elif sys.argv[1:] == ["--check-knobs"]:
    print(json.dumps([check(env) for env in json.load(sys.stdin)]))
else:
    sys.exit("usage: train.py --knobs | --check-knobs")
'''


def make_workload(root: Path, source: str = FAKE_WORKLOAD) -> Path:
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train" / "train.py").write_text(source)
    return root


def planned_for(tmp_path: Path, text: str):
    path = tmp_path / "wave.yaml"
    path.write_text(textwrap.dedent(text))
    return expand_wave(load_wave(path, ["screen"]), 1), str(path)


@pytest.fixture
def workload(tmp_path) -> Path:
    return make_workload(tmp_path / "snap")


def test_listing_is_read_without_importing_the_workload(workload):
    listing = load_knob_listing(workload)
    assert listing.names == ["DEPTH", "DEVICE", "MATRIX_LR", "SEED", "TIME_BUDGET", "WEIGHT_DECAY"]
    depth = listing.knobs["DEPTH"]
    assert (depth.type, depth.default, depth.min, depth.max) == ("int", {"gpu": 8, "cpu": 2}, 1.0, 64.0)
    assert listing.knobs["DEVICE"].choices == ("auto", "cpu", "cuda")


def test_valid_wave_passes(tmp_path, workload):
    planned, source = planned_for(tmp_path, "env: {DEVICE: cpu}\ngrid: {MATRIX_LR: [0.01, 0.02], DEPTH: [2, 4]}\n")
    check_wave_knobs(planned, load_knob_listing(workload), workload, source)


def test_unknown_knob_names_the_closest_one(tmp_path, workload):
    planned, source = planned_for(tmp_path, "grid: {MATRIX_LRR: [0.01, 0.02]}\n")
    with pytest.raises(InputError) as info:
        check_wave_knobs(planned, load_knob_listing(workload), workload, source)
    message = str(info.value)
    assert message.startswith(f"{source}: `grid.MATRIX_LRR`: unknown knob; did you mean MATRIX_LR?")
    assert "(valid: DEPTH, DEVICE, MATRIX_LR, TIME_BUDGET, WEIGHT_DECAY)" in message
    assert message.count("\n") == 0  # reported once, not once per experiment


def test_every_unknown_knob_is_reported_at_its_field(tmp_path, workload):
    text = "env: {TIME_BUDGT: 5}\nexperiments:\n  - {WEIGHTDECAY: 0.1}\n  - {ZZZZZZ: 1}\n"
    planned, source = planned_for(tmp_path, text)
    problems = unknown_knob_errors(planned, load_knob_listing(workload), source)
    assert problems[0].startswith(f"{source}: `env.TIME_BUDGT`: unknown knob; did you mean TIME_BUDGET?")
    assert problems[1].startswith(f"{source}: `experiments[0].WEIGHTDECAY`: unknown knob; did you mean WEIGHT_DECAY?")
    assert problems[2].startswith(f"{source}: `experiments[1].ZZZZZZ`: unknown knob; (valid:")


def test_bad_value_is_reported_with_its_field_path(tmp_path, workload):
    planned, source = planned_for(tmp_path, "grid: {MATRIX_LR: [0.01, abc], DEPTH: [2, 4]}\n")
    with pytest.raises(InputError) as info:
        check_wave_knobs(planned, load_knob_listing(workload), workload, source)
    # Two configurations have MATRIX_LR=abc; the problem is reported once, at its place in the file.
    assert str(info.value) == f"{source}: `grid.MATRIX_LR[1]` = 'abc': MATRIX_LR='abc': must be a float"


def test_several_bad_values(tmp_path, workload):
    text = "env: {DEVICE: tpu}\nexperiments:\n  - {DEPTH: -1}\n"
    planned, source = planned_for(tmp_path, text)
    with pytest.raises(InputError) as info:
        check_wave_knobs(planned, load_knob_listing(workload), workload, source)
    assert str(info.value) == f"{source}: `env.DEVICE` = 'tpu': DEVICE='tpu': must be one of ['auto', 'cpu', 'cuda']"


def test_values_are_checked_in_one_batch_of_distinct_configurations(tmp_path):
    root = make_workload(tmp_path / "snap", FAKE_WORKLOAD.replace(
        'print(json.dumps([check(env) for env in json.load(sys.stdin)]))',
        'envs = json.load(sys.stdin)\n    open("calls.jsonl", "a").write(json.dumps(envs) + "\\n")\n'
        '    print(json.dumps([check(env) for env in envs]))',
    ))
    spec = WaveSpec(name="w", seeds=3, grid={"DEPTH": [2, 4, 2]})
    planned = expand_wave(spec, 1)
    assert len(planned) == 6
    check_wave_knobs(planned, load_knob_listing(root), root, "w.yaml")
    calls = [json.loads(line) for line in (root / "calls.jsonl").read_text().splitlines()]
    assert calls == [[{"DEPTH": "2"}, {"DEPTH": "4"}]]


def test_an_error_naming_no_knob_names_the_configuration(tmp_path):
    root = make_workload(tmp_path / "snap", FAKE_WORKLOAD.replace(
        "return None", 'return "DEPTH and width together exceed memory" if env.get("DEPTH") == "64" else None'
    ).replace('"DEPTH and', '"depth and'))
    planned, source = planned_for(tmp_path, "grid: {DEPTH: [2, 64]}\n")
    with pytest.raises(InputError, match=r"configuration `DEPTH=64`: depth and width together exceed memory"):
        check_wave_knobs(planned, load_knob_listing(root), root, source)


def test_missing_script(tmp_path):
    with pytest.raises(InputError, match=r"workload script .*train/train\.py not found"):
        load_knob_listing(tmp_path)


def test_script_that_fails(tmp_path):
    root = make_workload(tmp_path, "import sys\nsys.stderr.write('ImportError: no torch\\n')\nsys.exit(3)\n")
    with pytest.raises(InputError, match=r"failed with exit code 3.*\n.*ImportError: no torch"):
        load_knob_listing(root)


def test_output_that_is_not_json(tmp_path):
    root = make_workload(tmp_path, "print('knobs: MATRIX_LR, DEPTH')\n")
    with pytest.raises(InputError, match=r"did not print valid JSON on stdout; it printed: knobs: MATRIX_LR"):
        load_knob_listing(root)


def test_listing_in_the_wrong_shape(tmp_path):
    root = make_workload(tmp_path, "import json\nprint(json.dumps({'knobs': ['MATRIX_LR']}))\n")
    with pytest.raises(InputError, match=r"knob listing is not in the expected shape"):
        load_knob_listing(root)


def test_check_answers_of_the_wrong_length(tmp_path, workload):
    root = make_workload(tmp_path / "snap2", FAKE_WORKLOAD.replace(
        "print(json.dumps([check(env) for env in json.load(sys.stdin)]))", "print('[null]')"
    ))
    planned, source = planned_for(tmp_path, "grid: {DEPTH: [2, 4]}\n")
    with pytest.raises(InputError, match=r"returned 1 answers for 2 configurations"):
        check_wave_knobs(planned, load_knob_listing(root), root, source)


def test_parse_listing_accepts_a_plain_default_and_extra_fields():
    listing = parse_knob_listing({"knobs": {"A": {"type": "int", "default": 3, "unit": "s", "help": None}}})
    assert listing.knobs["A"].default == {"default": 3}
    assert listing.knobs["A"].help == ""


# ---- configurations compared after filling in defaults ------------------------------------------------


def test_canonical_config_leaves_out_defaults_of_every_preset_and_spells_values_once(workload):
    listing = load_knob_listing(workload)
    assert canonical_config({"WEIGHT_DECAY": "0.00", "DEVICE": "auto", "DEPTH": "8.0"}, listing) == {"DEPTH": "8"}
    # 0.04 is the default on a GPU but not on CPU: it stays, unless PRESET says which applies
    assert canonical_config({"MATRIX_LR": "0.040"}, listing) == {"MATRIX_LR": "0.04"}
    assert canonical_config({"MATRIX_LR": "0.040", "PRESET": "gpu"}, listing) == {"PRESET": "gpu"}
    assert canonical_config({"ROPE": "yarn", "DEPTH": "abc"}, listing) == {"ROPE": "yarn", "DEPTH": "abc"}


def test_a_grid_point_equal_to_the_baseline_is_the_baseline_and_runs_once(tmp_path, workload):
    planned, source = planned_for(tmp_path, """\
        name: w
        seeds: 2
        grid: {WEIGHT_DECAY: [0.0, 0.1]}
        experiments:
          - {description: baseline}
    """)
    merged, warnings = canonicalize(planned, load_knob_listing(workload), source)
    assert len(planned) == 6 and len(merged) == 4
    base = [p for p in merged if p.description == "baseline"]
    assert [p.seed for p in base] == [0, 1] and {p.label for p in base} == {"baseline"}
    assert base[0].config == {"WEIGHT_DECAY": "0.0"}  # the first one's knobs, run as the baseline
    assert len(warnings) == 1 and "WEIGHT_DECAY=0.0" in warnings[0] and "as the baseline" in warnings[0]
    assert len({p.config_key for p in merged}) == 2


def test_the_baseline_is_spread_through_the_wave():
    planned = [PlannedExperiment({"A": str(i)}, 0, "", f"k{i}", f"A={i}") for i in range(6)]
    planned += [PlannedExperiment({}, s, "baseline", "b", "baseline") for s in range(2)]
    order = [p.label for p in interleave_baseline(planned)]
    assert order == ["A=0", "A=1", "baseline", "A=2", "A=3", "A=4", "baseline", "A=5"]
    assert interleave_baseline(planned[:6]) == planned[:6]
