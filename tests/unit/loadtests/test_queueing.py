"""The queueing formulas the load test report compares its measurements with, against values
worked out by hand."""

import math

import pytest

from loadtests.queueing import erlang_c, mgc_mean_wait, mmc_wait
from loadtests.report import fmt


def test_erlang_c_matches_hand_worked_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = utilisation
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9)
    assert erlang_c(2, 2.0) == 1.0  # saturated


def test_mm1_wait_is_utilisation_over_the_drain_rate():
    # lambda 0.5/s, mu 1/s: mean wait rho / (mu - lambda) = 1 s; P(W > t) = 0.5 exp(-0.5 t).
    wait = mmc_wait(0.5, 1.0, 1)
    assert wait["mean"] == pytest.approx(1.0)
    assert wait["p50"] == 0.0
    assert wait["p95"] == pytest.approx(2 * math.log(10))


def test_constant_service_times_halve_the_mean_wait_and_overload_is_unstable():
    assert mgc_mean_wait(1.0, 1.5, 2, 0.0) == pytest.approx(mmc_wait(1.0, 1.5, 2)["mean"] / 2)
    overloaded = mmc_wait(3.0, 1.0, 2)
    assert overloaded["mean"] == math.inf and overloaded["utilisation"] == 1.5
    assert fmt(overloaded["mean"]) == "unstable"
