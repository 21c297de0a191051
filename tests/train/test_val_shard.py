"""SKYFLEET_VAL_SHARD may not be one of the DATA_SHARDS training shards: runs would be scored on text they trained on."""
from __future__ import annotations

import pytest

from .conftest import prepare


def _no_download(*args, **kwargs):
    raise AssertionError("nothing may be downloaded for a refused setting")


@pytest.mark.parametrize("val_shard, shards", [("0", 8), ("7", 8), ("3", 4)])
def test_a_validation_shard_among_the_training_shards_is_refused(monkeypatch, tmp_path, val_shard, shards):
    monkeypatch.setenv("SKYFLEET_CACHE", str(tmp_path))
    monkeypatch.setenv("SKYFLEET_VAL_SHARD", val_shard)
    monkeypatch.setattr(prepare, "download", _no_download)
    with pytest.raises(ValueError) as err:
        prepare.ensure_prepared("real", 300, shards)
    assert f"SKYFLEET_VAL_SHARD is {val_shard}" in str(err.value) and f"DATA_SHARDS is {shards}" in str(err.value)
    assert f">= {shards}" in str(err.value)


def test_a_validation_shard_past_the_training_shards_is_used():
    assert prepare.val_shard_index(8) == prepare.DEFAULT_VAL_SHARD


def test_the_first_shard_past_the_training_shards_is_allowed(monkeypatch):
    monkeypatch.setenv("SKYFLEET_VAL_SHARD", "8")
    assert prepare.val_shard_index(8) == 8
