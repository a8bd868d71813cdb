"""The step mix of a load test, `steps:weight,...` (`20:2,30:4,50:3,100:1`; a weight may be left
out for 1): one parser for the runner, the capacity simulation and the locustfile."""

import math

from serve_app.limits import MAX_STEPS


def parse_mix(text: str) -> dict[int, float]:
    """'20:2,30:4' -> {20: 2.0, 30: 4.0}; ValueError naming the bad item."""
    mix: dict[int, float] = {}
    for item in text.split(","):
        steps, colon, weight = item.strip().partition(":")
        try:
            parsed = float(weight) if colon else 1.0
        except ValueError:
            parsed = math.nan
        if not steps.isdigit() or not 1 <= int(steps) <= MAX_STEPS or not (math.isfinite(parsed) and parsed > 0):
            raise ValueError(f"{item!r} is not steps:weight, steps 1 to {MAX_STEPS}, weight above 0 (e.g. 20:2,30:4)")
        mix[int(steps)] = parsed
    return mix
