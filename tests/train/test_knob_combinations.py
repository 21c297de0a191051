"""The batch-size combination rule: its error offers fixes, and a fix that keeps the tested value comes first."""

from __future__ import annotations

import re

import pytest

from .conftest import knobs

BASE = {"HEAD_DIM": 64, "MAX_SEQ_LEN": 2048, "DEVICE_BATCH_SIZE": 64, "TOTAL_BATCH_SIZE": 2**19}


@pytest.mark.parametrize("change, given, first", [
    # testing a smaller batch: keep it, shrink the micro-batch (what an agent means)
    ({"TOTAL_BATCH_SIZE": 32768}, {"TOTAL_BATCH_SIZE"}, "DEVICE_BATCH_SIZE=16"),
    # testing a micro-batch that does not divide the batch: keep it, round the batch
    ({"DEVICE_BATCH_SIZE": 48}, {"DEVICE_BATCH_SIZE"}, "TOTAL_BATCH_SIZE=491520"),
    # both given: every fix changes one; both are offered
    ({"TOTAL_BATCH_SIZE": 32768, "DEVICE_BATCH_SIZE": 64}, {"TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"}, None),
])
def test_the_offered_fixes_work_and_keep_the_tested_value_first(change, given, first):
    values = {**BASE, **change}
    message = knobs.combination_error(values, given)
    fixes = re.findall(r"([A-Z_]+)=(\d+)(?: \(keeps [A-Z_]+=\d+\))?(?: or |$)", message.split("e.g. ", 1)[1])
    assert len(fixes) == 2, message
    if first is not None:
        assert message.split("e.g. ", 1)[1].startswith(first), message
    for name, value in fixes:  # each fix, applied, satisfies the rule
        assert knobs.combination_error({**values, name: int(value)}, given) is None, (name, value)


def test_a_batch_that_is_no_multiple_of_the_sequence_length_gets_the_batch_fix_only():
    message = knobs.combination_error({**BASE, "TOTAL_BATCH_SIZE": 1000}, {"TOTAL_BATCH_SIZE"})
    assert message.endswith("e.g. TOTAL_BATCH_SIZE=131072")


def test_check_many_passes_the_given_knobs():
    declared = {name: knobs.Knob(value, min=1) for name, value in BASE.items()}
    answer = knobs.check_many(declared, [{"TOTAL_BATCH_SIZE": "32768"}])[0]
    assert "e.g. DEVICE_BATCH_SIZE=16 (keeps TOTAL_BATCH_SIZE=32768) or TOTAL_BATCH_SIZE=131072" in answer
