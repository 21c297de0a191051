"""Group-sequential boundaries: published values, the alpha they spend, and simulated error rates."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t

from fleet.research.group_sequential import (
    crossing_probability,
    design,
    inflation,
    obf_spending,
    pairs_for_power,
)

# Lan–DeMets O'Brien–Fleming spending, 5 equally spaced looks, one-sided alpha 0.025: the boundaries
# published for this design (Jennison & Turnbull 2000; the R package gsDesign gives the same).
PUBLISHED_LDOF_5 = (4.8769, 3.3569, 2.6803, 2.2898, 2.0310)


def test_boundaries_match_the_published_lan_demets_obrien_fleming_values():
    d = design(0.025, (1, 2, 3, 4, 5))
    assert d.z == pytest.approx(PUBLISHED_LDOF_5, abs=2e-3)


@pytest.mark.parametrize("alpha, looks", [(0.025, (1, 2, 3, 4, 5)), (0.05, tuple(range(3, 17))),
                                          (0.05 / 3, tuple(range(3, 33))), (0.01, (4, 9, 16))])
def test_the_design_spends_exactly_alpha(alpha, looks):
    assert crossing_probability(design(alpha, looks), 0.0) == pytest.approx(alpha, rel=1e-3)


def test_one_look_is_the_fixed_test_and_spending_reaches_alpha_at_the_end():
    assert design(0.05, (10,)).z == (pytest.approx(norm.isf(0.05)),)
    assert obf_spending(1.0, 0.05) == pytest.approx(0.05)
    assert obf_spending(0.0, 0.05) == 0.0
    assert obf_spending(0.2, 0.05) < 1e-4  # O'Brien–Fleming spends almost nothing early


def test_peeking_with_a_fixed_threshold_inflates_the_error_and_the_design_does_not():
    """Simulated score paths under the null, a look after every pair from 3 to 16."""
    rng = np.random.default_rng(7)
    paths = np.cumsum(rng.standard_normal((40_000, 16)), axis=1)
    n = np.arange(1, 17)
    z = paths / np.sqrt(n)
    looks = slice(2, 16)
    naive = float(np.mean((z[:, looks] >= norm.isf(0.05)).any(axis=1)))
    bounds = np.asarray(design(0.05, tuple(range(3, 17))).z)
    sequential = float(np.mean((z[:, looks] >= bounds).any(axis=1)))
    print(f"false positives, 14 looks: fixed-n threshold {naive:.3f}, group-sequential {sequential:.3f} (alpha 0.05)")
    assert naive > 0.10
    assert sequential == pytest.approx(0.05, abs=0.006)


def _t_paths(rng, paths: int, cap: int):
    x = rng.standard_normal((paths, cap))
    n = np.arange(1, cap + 1)
    mean = np.cumsum(x, axis=1) / n
    var = (np.cumsum(x * x, axis=1) - n * mean * mean) / np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mean / np.sqrt(var / n)


@pytest.mark.parametrize("alpha, first, cap", [(0.05, 3, 6), (0.05, 3, 16), (0.05 / 3, 3, 16)])
def test_the_t_boundaries_keep_the_error_at_alpha_where_converted_ones_do_not(alpha, first, cap):
    """Unknown variance: an independent simulation of paired t statistics under the null."""
    t = _t_paths(np.random.default_rng(123), 200_000, cap)
    d = design(alpha, tuple(range(first, cap + 1)))
    looks = range(first, cap + 1)
    simulated = float(np.mean(np.any([t[:, n - 1] >= d.t_at(n, n - 1) for n in looks], axis=0)))
    converted_bounds = [float(student_t.isf(norm.sf(d.z_at(n)), n - 1)) for n in looks]
    converted = float(np.mean(np.any([t[:, n - 1] >= b for n, b in zip(looks, converted_bounds)], axis=0)))
    print(f"alpha {alpha:.4f}, looks {first}..{cap}: simulated-t boundaries {simulated:.4f}, "
          f"converted normal boundaries {converted:.4f}")
    assert 0.93 * alpha <= simulated <= alpha
    assert converted > alpha


def test_the_t_boundary_is_wider_with_fewer_degrees_of_freedom():
    d = design(0.05, tuple(range(3, 17)))
    assert d.t_at(16, 15) > d.z_at(16)
    assert d.t_at(16, 5) > d.t_at(16, 15)
    assert d.t_at(2, 1) is None  # not a look


def test_power_and_the_pairs_it_takes():
    d16 = design(0.05, tuple(range(3, 17)))
    fixed = design(0.05, (16,))
    assert crossing_probability(d16, 0.5) < crossing_probability(fixed, 0.5)  # looking costs a little power
    assert crossing_probability(d16, 0.5) > crossing_probability(fixed, 0.5) - 0.05
    assert 1.0 < inflation(0.05, 3) < 1.15
    need = pairs_for_power(0.05, 3, 0.5)
    assert math.ceil(((norm.isf(0.05) + norm.isf(0.2)) / 0.5) ** 2) <= need
    assert crossing_probability(design(0.05, tuple(range(3, need + 1))), 0.5) >= 0.79
    assert pairs_for_power(0.05, 3, 0.0) is None


@pytest.mark.parametrize("alpha, looks", [(0.0, (3,)), (1.0, (3,)), (0.05, ()), (0.05, (4, 3)), (0.05, (0, 3))])
def test_bad_designs_are_refused(alpha, looks):
    with pytest.raises(ValueError):
        design(alpha, looks)
