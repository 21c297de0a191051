"""Constant knobs: which ALL_CAPS names a wave may set, how values are checked, and the exact rewrite."""
from __future__ import annotations

import pytest

from fleet.core.constants import (
    ScriptError,
    parse_config_value,
    render_value,
    rewrite,
    scan_constants,
    seed_change,
    value_problem,
)

SCRIPT = '''"""A training script in autoresearch's shape: code first, then the knob block."""
import os
import torch
from prepare import MAX_SEQ_LEN, TIME_BUDGET

def helper(x):
    LOCAL_ONLY = 3
    return x * LOCAL_ONLY

# Hyperparameters (edit these directly)
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context
TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step
WIDTH = 8 * 64
ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2
LAYERS = [1, 2, 3]
NEG_LR = -1.5e-3
USE_FLASH = True
NOTE: str = "typed"
DEPTH = int(os.environ["D"])
TWICE = 1
TWICE = 2
SHADOWED = 4
A, B = 1, 2
HUGE = 2 ** 10 ** 10
NESTED = ((1, 2), (3, 4))
NOTHING = None
ZERO_DIV = 1 / 0

def later():
    global SHADOWED
    SHADOWED = 5

torch.manual_seed(42)
torch.cuda.manual_seed(42)
'''

KNOBS = {  # name -> (value, kind, text as written, trailing comment)
    "ASPECT_RATIO": (64, "int", "64", "model_dim = depth * ASPECT_RATIO"),
    "WINDOW_PATTERN": ("SSSL", "str", '"SSSL"', "sliding window pattern: L=full, S=half context"),
    "TOTAL_BATCH_SIZE": (524288, "int", "2**19", "~524K tokens per optimizer step"),
    "WIDTH": (512, "int", "8 * 64", ""),
    "ADAM_BETAS": ((0.8, 0.95), "tuple", "(0.8, 0.95)", "Adam beta1, beta2"),
    "LAYERS": ([1, 2, 3], "list", "[1, 2, 3]", ""),
    "NEG_LR": (-0.0015, "float", "-1.5e-3", ""),
    "USE_FLASH": (True, "bool", "True", ""),
    "NOTE": ("typed", "str", '"typed"', ""),
}

NOT_KNOBS = {  # name -> words its reason must contain
    "DEPTH": "is computed",
    "TWICE": "assigned 2 times (lines",
    "SHADOWED": "again inside function later",
    "LOCAL_ONLY": "only inside function helper",
    "MAX_SEQ_LEN": "imported from prepare",
    "TIME_BUDGET": "imported from prepare",
    "A": "at module level",
    "HUGE": "is computed",
    "NESTED": "is computed",
    "NOTHING": "is computed",
    "ZERO_DIV": "is computed",
}


def test_scan_finds_exactly_the_constant_knobs():
    scan = scan_constants(SCRIPT, "train.py")
    assert set(scan.knobs) == set(KNOBS)
    for name, (value, kind, text, comment) in KNOBS.items():
        const = scan.knobs[name]
        assert (const.value, const.kind, const.text, const.comment) == (value, kind, text, comment), name
        assert SCRIPT[const.start:const.end] == text
        assert SCRIPT.splitlines()[const.line - 1].startswith(name)


@pytest.mark.parametrize("name, words", NOT_KNOBS.items())
def test_names_that_are_not_knobs_say_why(name, words):
    scan = scan_constants(SCRIPT, "train.py")
    assert name not in scan.knobs
    assert words in scan.rejected[name].why


def test_a_script_that_is_not_python_names_its_line():
    with pytest.raises(ScriptError, match=r"train.py:2: not valid Python"):
        scan_constants("X = 1\nY = (\n", "train.py")


def test_rewrite_replaces_only_the_value_expressions():
    scan = scan_constants(SCRIPT)
    new = rewrite(SCRIPT, scan, {"TOTAL_BATCH_SIZE": 2**18, "WINDOW_PATTERN": "SSLL", "ADAM_BETAS": (0.9, 0.95),
                                 "USE_FLASH": False, "LAYERS": [4]})
    changed = [(a, b) for a, b in zip(SCRIPT.splitlines(), new.splitlines()) if a != b]
    assert changed == [
        ('WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context',
         'WINDOW_PATTERN = "SSLL" # sliding window pattern: L=full, S=half context'),
        ("TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step",
         "TOTAL_BATCH_SIZE = 262144 # ~524K tokens per optimizer step"),
        ("ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2", "ADAM_BETAS = (0.9, 0.95) # Adam beta1, beta2"),
        ("LAYERS = [1, 2, 3]", "LAYERS = [4]"),
        ("USE_FLASH = True", "USE_FLASH = False"),
    ]
    assert len(new.splitlines()) == len(SCRIPT.splitlines())


def test_an_unchanged_value_keeps_its_text():
    scan = scan_constants(SCRIPT)
    assert rewrite(SCRIPT, scan, {"TOTAL_BATCH_SIZE": 524288, "ADAM_BETAS": (0.8, 0.95)}) == SCRIPT


def test_rewrite_survives_non_ascii_before_the_value():
    source = 'TITLE = "naïve"; LR = 0.1  # lérning rate\nÜBER = 1\n'  # ast columns count bytes, not characters
    scan = scan_constants(source)
    assert set(scan.knobs) == {"TITLE", "LR"}  # ÜBER is not an ASCII ALL_CAPS name
    assert rewrite(source, scan, {"LR": 0.2, "TITLE": "ö"}) == 'TITLE = "ö"; LR = 0.2  # lérning rate\nÜBER = 1\n'


VALUES = [  # knob, value given in a wave, problem words (None = fine)
    ("ASPECT_RATIO", 32, None),
    ("ASPECT_RATIO", 32.5, "must be a whole number"),
    ("ASPECT_RATIO", True, "must be a whole number"),
    ("ASPECT_RATIO", "32", "must be a whole number"),
    ("NEG_LR", 1, None),
    ("NEG_LR", 0.001, None),
    ("NEG_LR", "fast", "must be a number"),
    ("WINDOW_PATTERN", "SSLL", None),
    ("WINDOW_PATTERN", 5, "must be a string"),
    ("USE_FLASH", False, None),
    ("USE_FLASH", 1, "must be a boolean"),
    ("ADAM_BETAS", [0.9, 0.99], None),
    ("ADAM_BETAS", [0.9], "tuple of 2 (ADAM_BETAS = (0.8, 0.95)"),
    ("ADAM_BETAS", [0.9, 0.99, 0.999], "but 3 values were given"),
    ("ADAM_BETAS", 0.9, "give a list of 2 values"),
    ("ADAM_BETAS", [0.9, "x"], "ADAM_BETAS[1] must be a number"),
    ("LAYERS", [1, 2, 3], None),
    ("LAYERS", [1, 2], "list of 3"),
    ("DEPTH_IS_NOT_HERE", 1, KeyError),
]


@pytest.mark.parametrize("name, given, words", VALUES)
def test_values_are_checked_against_the_constant(name, given, words):
    scan = scan_constants(SCRIPT)
    if words is KeyError:
        assert name not in scan.knobs
        return
    problem = value_problem(scan.knobs[name], given)
    if words is None:
        assert problem is None
    else:
        assert problem is not None and words in problem, problem
        assert "line" in problem  # where the constant is, so the fix is easy to find


@pytest.mark.parametrize("name, text, expected", [
    ("ASPECT_RATIO", "32", 32),
    ("NEG_LR", "1", 1.0),
    ("USE_FLASH", "0", False),
    ("USE_FLASH", "1", True),
    ("WINDOW_PATTERN", "SSLL", "SSLL"),
    ("ADAM_BETAS", "[0.9, 0.99]", (0.9, 0.99)),
    ("LAYERS", "[4, 5, 6]", [4, 5, 6]),
])
def test_stored_configuration_values_parse_back_to_the_constants_type(name, text, expected):
    value = parse_config_value(scan_constants(SCRIPT).knobs[name], text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("value, like, text", [
    (0.1, "", "0.1"), (2**18, "2**19", "262144"), (True, "", "True"), ("SSLL", '"SSSL"', '"SSLL"'),
    ("SSLL", "'SSSL'", "'SSLL'"), ('a"b', '"x"', "'a\"b'"), ((0.9,), "", "(0.9,)"), ((1, 2), "", "(1, 2)"),
    ([1.5], "", "[1.5]"),
])
def test_rendered_values_are_python_that_reads_back(value, like, text):
    assert render_value(value, like) == text
    assert eval(text) == value  # noqa: S307 (a literal we just wrote)


def test_seed_change_adds_a_seed_constant_and_uses_it():
    scan = scan_constants(SCRIPT)
    new = seed_change(SCRIPT, scan)
    removed = [line for line in SCRIPT.splitlines() if line not in new.splitlines()]
    added = [line for line in new.splitlines() if line not in SCRIPT.splitlines()]
    assert removed == ["torch.manual_seed(42)", "torch.cuda.manual_seed(42)"]
    assert added[0].startswith("SEED = 42") and added[1:] == ["torch.manual_seed(SEED)", "torch.cuda.manual_seed(SEED)"]
    assert "SEED" in scan_constants(new).knobs
    assert new.index("SEED = 42") < new.index("torch.manual_seed(SEED)")


def test_no_seed_change_when_there_is_a_seed_or_no_seed_call():
    with_seed = "SEED = 1\nimport random\nrandom.seed(SEED)\n"
    assert seed_change(with_seed, scan_constants(with_seed)) is None
    no_call = "LR = 0.1\n"
    assert seed_change(no_call, scan_constants(no_call)) is None
