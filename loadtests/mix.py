"""The job mix of a load test, `[model@]steps:weight,...` (`20:2,30:4,50:3,100:1`, or with a
served model's id: `50:3,fastwan2.2-ti2v-5b@3:1`; a weight may be left out for 1; without a model,
the server's default): one parser for the runner, the capacity simulation and the locustfile."""

import math
from typing import NamedTuple

from serve_app.limits import MAX_STEPS


class Choice(NamedTuple):
    """One kind of job of the mix."""

    steps: int
    model: str | None = None  # None: the server's default model

    @property
    def label(self) -> str:
        """How reports name it: `50 steps`, `fastwan2.2-ti2v-5b 3 steps`."""
        return f"{self.model} {self.steps} steps" if self.model else f"{self.steps} steps"


def parse_mix(text: str) -> dict[Choice, float]:
    """'20:2,fast@3:4' -> {Choice(20): 2.0, Choice(3, 'fast'): 4.0}; ValueError naming the bad item."""
    mix: dict[Choice, float] = {}
    for item in text.split(","):
        head, colon, weight = item.strip().rpartition(":")
        model, at, steps = (head if colon else weight).rpartition("@")
        try:
            parsed = float(weight) if colon else 1.0
        except ValueError:
            parsed = math.nan
        good_steps = steps.isdigit() and 1 <= int(steps) <= MAX_STEPS
        if (at and not model) or not good_steps or not (math.isfinite(parsed) and parsed > 0):
            raise ValueError(
                f"{item!r} is not [model@]steps:weight, steps 1 to {MAX_STEPS}, weight above 0 "
                "(e.g. 20:2,30:4,fast@3:1)"
            )
        mix[Choice(int(steps), model or None)] = parsed
    return mix
