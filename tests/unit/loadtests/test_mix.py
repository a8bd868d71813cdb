"""The step mix: one parser for the runner, the capacity simulation and the locustfile."""

import pytest

from loadtests.mix import parse_mix
from loadtests.simulate import mean_service_s


def test_a_weight_may_be_left_out_and_every_user_of_the_mix_reads_it_alike():
    assert parse_mix("20,30:2") == {20: 1.0, 30: 2.0}
    # This mix passed the runner's check and then crashed the simulation's arithmetic.
    assert mean_service_s("20,30:2", time_scale=1.0) > 0


@pytest.mark.parametrize("text", ["20;2", "0:1", "101:1", "20:0", "20:-1", "20:nan", "20:inf", "", "x:1"])
def test_a_bad_mix_is_refused_naming_the_item(text):
    with pytest.raises(ValueError, match="is not steps:weight"):
        parse_mix(text)
