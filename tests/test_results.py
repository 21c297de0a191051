from __future__ import annotations

import pytest

from fleet.core.results import (
    MAX_LINE,
    TAIL_LINES,
    clean_lines,
    parse_run_log,
    parse_value,
)

SUMMARY = """\
step 00100 | loss 3.21 | 12000 tok/s
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_memory_mb:   45060.2
mfu_percent:      unknown
total_tokens_M:   499.6
num_steps:        953
device:           NVIDIA H100 80GB HBM3
evaluator_sha:    3f2a9c
"""
STATUS_DONE = "EXPERIMENT_STATUS: done\n"
RESULT = "EXPERIMENT_RESULT: exp-01 val_bpb=0.997900 memory_gb=44.0\n"
GOOD = SUMMARY + STATUS_DONE + RESULT


def test_a_good_run():
    run = parse_run_log(GOOD, "exp-01", 0)
    assert (run.outcome, run.val_bpb, run.reason) == ("done", 0.9979, "")
    assert run.metrics["training_seconds"] == 300.1
    assert run.metrics["num_steps"] == 953.0
    assert run.metrics["mfu_percent"] == "unknown"
    assert run.metrics["device"] == "NVIDIA H100 80GB HBM3"
    assert run.metrics["total_tokens_M"] == 499.6
    assert run.metrics["evaluator_sha"] == "3f2a9c"
    assert run.metrics["memory_gb"] == 44.0  # from the result line, where the summary has no such key
    assert run.tail[-1] == RESULT.strip()


# Each row: (log text, experiment id, exit code, expected outcome, expected val_bpb, a word of the reason).
CASES = [
    ("good run", GOOD, "exp-01", 0, "done", 0.9979, ""),
    ("unknown exit code", GOOD, "exp-01", None, "done", 0.9979, ""),
    ("summary only, no wrapper", SUMMARY, "exp-01", 0, "done", 0.9979, ""),
    ("result line only", "training...\n" + RESULT, "exp-01", 0, "done", 0.9979, ""),
    ("non-zero exit", GOOD, "exp-01", 1, "crash", None, "exit code 1"),
    ("killed by signal", SUMMARY, "exp-01", -9, "crash", None, "exit code -9"),
    ("exit with a traceback", "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n",
     "exp-01", 1, "crash", None, "exit code 1 (RuntimeError: CUDA out of memory)"),
    ("training failed line", "step 12 loss nan\nTRAINING_FAILED: loss is NaN at step 12\n", "exp-01", 1,
     "crash", None, "TRAINING_FAILED: loss is NaN at step 12"),
    ("training failed despite exit 0", SUMMARY + "TRAINING_FAILED: loss exploded\n", "exp-01", 0, "crash", None,
     "TRAINING_FAILED: loss exploded"),
    ("status crash", SUMMARY + "EXPERIMENT_STATUS: crash\n", "exp-01", 0, "crash", None, "EXPERIMENT_STATUS: crash"),
    ("crash anywhere wins", SUMMARY + "EXPERIMENT_STATUS: crash\nEXPERIMENT_STATUS: done\n", "exp-01", 0, "crash",
     None, "EXPERIMENT_STATUS: crash"),
    ("no summary at all", "starting\nstep 1\n", "exp-01", 0, "crash", None, "no summary"),
    ("empty log", "", "exp-01", 0, "crash", None, "no summary"),
    ("summary without val_bpb", "---\nnum_steps: 3\n", "exp-01", 0, "crash", None, "no val_bpb in summary"),
    ("val_bpb nan", "---\nval_bpb: nan\n", "exp-01", 0, "crash", None, "val_bpb is nan"),
    ("val_bpb NaN", "---\nval_bpb: NaN\n", "exp-01", 0, "crash", None, "val_bpb is nan"),
    ("val_bpb inf", "---\nval_bpb: inf\n", "exp-01", 0, "crash", None, "val_bpb is inf"),
    ("val_bpb -inf", "---\nval_bpb: -inf\n", "exp-01", 0, "crash", None, "val_bpb is inf"),
    ("val_bpb overflow", "---\nval_bpb: 1e999\n", "exp-01", 0, "crash", None, "val_bpb is not a number: '1e999'"),
    ("val_bpb 1.2.3", "---\nval_bpb: 1.2.3\n", "exp-01", 0, "crash", None, "val_bpb is not a number: '1.2.3'"),
    ("val_bpb empty", "---\nval_bpb:\nnum_steps: 3\n", "exp-01", 0, "crash", None, "val_bpb is empty"),
    ("val_bpb with trailing junk", "---\nval_bpb: 0.99 (best)\n", "exp-01", 0, "crash", None, "not a number"),
    ("val_bpb hex", "---\nval_bpb: 0x1p-1\n", "exp-01", 0, "crash", None, "not a number"),
    ("val_bpb python expr", "---\nval_bpb: __import__('os')\n", "exp-01", 0, "crash", None, "not a number"),
    ("key: value not after ---", "val_bpb: 0.5\nnum_steps: 3\n", "exp-01", 0, "crash", None, "no summary"),
    ("--- then garbage then val_bpb", "---\nwarning: something\nblah blah\nval_bpb: 0.5\n", "exp-01", 0,
     "crash", None, "no val_bpb in summary"),
    ("--- then a blank line", "---\n\nval_bpb: 0.5\n", "exp-01", 0, "crash", None, "no summary"),
    ("garbage interleaved: only the block counts", "---\nnum_steps: 3\n>>> junk <<<\nval_bpb: 0.5\n", "exp-01", 0,
     "crash", None, "no val_bpb in summary"),
    ("val_bpb twice in one block", "---\nval_bpb: 1.5\nval_bpb: 0.5\n", "exp-01", 0, "crash", None, "no summary"),
    ("truncated: --- at the end", SUMMARY + "---\n", "exp-01", None, "done", 0.9979, ""),
    ("truncated: only --- at the end", "step 1\n---", "exp-01", None, "crash", None, "no summary"),
    ("truncated mid-number, exit unknown", "---\nval_bpb: 0.99", "exp-01", None, "crash", None, "no summary"),
    ("unterminated last line, clean exit", "---\nval_bpb: 0.99", "exp-01", 0, "done", 0.99, ""),
    ("result line for another experiment", "EXPERIMENT_RESULT: exp-02 val_bpb=0.5\n", "exp-01", 0, "crash", None,
     "no summary"),
    ("result line with a prefix id", "EXPERIMENT_RESULT: exp-01x val_bpb=0.5\n", "exp-01", 0, "crash", None,
     "no summary"),
    ("result line with nan", "EXPERIMENT_RESULT: exp-01 val_bpb=nan\n", "exp-01", 0, "crash", None, "val_bpb is nan"),
    ("result line malformed", "EXPERIMENT_RESULT: exp-01 val_bpb=1.2.3\n", "exp-01", 0, "crash", None,
     "not a number"),
    ("result line without id", "EXPERIMENT_RESULT: val_bpb=0.5\n", "exp-01", 0, "crash", None, "no summary"),
    ("indented result line", "   EXPERIMENT_RESULT: exp-01 val_bpb=0.5\n", "exp-01", 0, "done", 0.5, ""),
    ("summary nan beats result line", "---\nval_bpb: nan\nEXPERIMENT_RESULT: exp-01 val_bpb=0.5\n", "exp-01", 0,
     "crash", None, "val_bpb is nan"),
    ("last complete block wins", "---\nval_bpb: 2.0\n---\nval_bpb: 1.0\nx\n---\n", "exp-01", 0, "done", 1.0, ""),
    ("ansi colours", "\x1b[1m---\x1b[0m\n\x1b[32mval_bpb: 0.8\x1b[0m\n", "exp-01", 0, "done", 0.8, ""),
    ("cursor codes and OSC title", "\x1b]0;title\x07---\n\x1b[2K\x1b[1Gval_bpb: 0.8\n", "exp-01", 0, "done", 0.8,
     ""),
    ("progress bar with \\r", "step 1\rstep 2\rstep 3\n---\nval_bpb: 0.7\r\n", "exp-01", 0, "done", 0.7, ""),
    ("\\r overwrites a fake value", "---\nval_bpb: 0.1\rval_bpb: nan\n", "exp-01", 0, "crash", None, "val_bpb is nan"),
    ("windows line endings", "---\r\nval_bpb: 0.6\r\nnum_steps: 3\r\n", "exp-01", None, "done", 0.6, ""),
    ("binary junk", "\x00\x01\xff\ufffd\x7f\n---\x00\nval_bpb: 0.6\x00\n\x02\x03\n", "exp-01", 0, "done", 0.6, ""),
    ("junk glued to ---", "\xff\ufffd---\nval_bpb: 0.6\n", "exp-01", 0, "crash", None, "no summary"),
    ("binary junk only", "\x00\x89PNG\r\n\x1a\n\x00\x00", "exp-01", 0, "crash", None, "no summary"),
    ("huge line in the block", "---\nval_bpb: 0.5" + "0" * 100_000 + "\n", "exp-01", 0, "crash", None, "no summary"),
    ("huge line before the block", "x" * 1_000_000 + "\n" + SUMMARY, "exp-01", 0, "done", 0.9979, ""),
    ("uppercase metric key ends the block", "---\nVAL_BPB: 0.5\n", "exp-01", 0, "crash", None, "no summary"),
    ("status line text is exact", SUMMARY + "EXPERIMENT_STATUS: crashed\n", "exp-01", 0, "done", 0.9979, ""),
]


@pytest.mark.parametrize("name, text, exp_id, exit_code, outcome, val_bpb, reason", CASES, ids=[c[0] for c in CASES])
def test_log_table(name, text, exp_id, exit_code, outcome, val_bpb, reason):
    run = parse_run_log(text, exp_id, exit_code)
    assert run.outcome == outcome, run.reason
    assert run.val_bpb == val_bpb
    if outcome == "crash":
        assert reason and reason in run.reason
        assert run.val_bpb is None
    else:
        assert run.reason == ""


@pytest.mark.parametrize(
    "text, value",
    [
        ("1.5", 1.5), ("  42 ", 42.0), ("-3e-2", -0.03), (".5", 0.5), ("7.", 7.0), ("+1", 1.0),
        ("unknown", "unknown"), ("nan", "nan"), ("inf", "inf"), ("1.2.3", "1.2.3"), ("", ""),
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"), ("1_000", "1_000"), ("0x10", "0x10"), ("1e999", "1e999"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_metrics_come_from_the_last_complete_block_only():
    run = parse_run_log("---\nval_bpb: 2.0\nold: 1\n---\nval_bpb: 1.0\n", "e", 0)
    assert run.metrics == {"val_bpb": 1.0}


def test_tail_keeps_the_last_cleaned_lines_of_a_crash():
    text = "".join(f"\x1b[31mline {i}\x1b[0m\n" for i in range(200)) + "Traceback...\nValueError: bad\n"
    run = parse_run_log(text, "e", 1)
    assert len(run.tail) == TAIL_LINES
    assert run.tail[-1] == "ValueError: bad" and run.tail[0] == "line 152"
    assert run.reason == "exit code 1 (ValueError: bad)"


def test_huge_lines_are_cut_in_the_tail():
    run = parse_run_log("y" * 50_000, "e", 1)
    assert len(run.tail) == 1 and len(run.tail[0]) < MAX_LINE + 20


def test_clean_lines_strips_escapes_and_control_characters():
    lines, trusted = clean_lines("a\x1b[31mb\x1b[0mc\x07\nprog 1\rprog 2\r\n" + "z" * (MAX_LINE + 1) + "\n")
    assert lines[:2] == ["abc", "prog 2"]
    assert trusted == [True, True, False]
    assert lines[2].endswith("[line cut]")


def test_hostile_values_never_reach_metrics_as_numbers():
    run = parse_run_log("---\nval_bpb: 0.9\nmfu_percent: nan\nsteps: inf\n", "e", 0)
    assert run.outcome == "done"
    assert run.metrics["mfu_percent"] == "nan" and run.metrics["steps"] == "inf"


def test_the_metric_named_in_fleet_yaml_is_the_result():
    log = "---\naccuracy: 0.91\nval_bpb: 1.2\npeak_vram_mb: 2048.0\n"
    run = parse_run_log(log, "e1", 0, metric="accuracy")
    assert (run.outcome, run.val_bpb) == ("done", 0.91)
    missing = parse_run_log("---\nval_bpb: 1.2\n", "e1", 0, metric="accuracy")
    assert (missing.outcome, missing.reason) == ("crash", "no accuracy in summary")
    assert parse_run_log("---\naccuracy: nan\n", "e1", 0, metric="accuracy").reason == "accuracy is nan"
