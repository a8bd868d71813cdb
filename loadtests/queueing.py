"""What queueing theory predicts for the jobs queue: M/M/c (Poisson arrivals, exponential
service, c replicas, one FIFO queue), and the Allen-Cunneen correction for service times that
are not exponential (M/G/c), which ours are not: a job's time is set by its step count."""

import math


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that a job waits, for `offered_load` = arrival rate x mean service time (in
    erlangs), which must stay below `servers` for the queue to be stable."""
    if offered_load >= servers:
        return 1.0
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= offered_load / k
        total += term
    last = term * offered_load / (servers - offered_load)  # a^c / c! x c / (c - a)
    return last / (total + last)


def mmc_wait(arrival_rate: float, mean_service_s: float, servers: int) -> dict[str, float]:
    """Mean and percentiles of the queue wait in M/M/c: P(wait > t) = C exp(-(c mu - lambda) t)."""
    load = arrival_rate * mean_service_s
    if load >= servers:
        return {"utilisation": load / servers, "p_wait": 1.0, "mean": math.inf, "p50": math.inf, "p95": math.inf}
    p_wait = erlang_c(servers, load)
    drain = servers / mean_service_s - arrival_rate  # c mu - lambda, jobs per second

    def quantile(q: float) -> float:
        return 0.0 if p_wait <= 1 - q else math.log(p_wait / (1 - q)) / drain

    return {
        "utilisation": load / servers,
        "p_wait": p_wait,
        "mean": p_wait / drain,
        "p50": quantile(0.5),
        "p95": quantile(0.95),
    }


def mgc_mean_wait(arrival_rate: float, mean_service_s: float, servers: int, service_cv2: float) -> float:
    """Allen-Cunneen: the M/M/c mean wait scaled by (1 + cv^2) / 2, cv^2 being the squared
    coefficient of variation of the service time (1 for exponential, 0 for constant)."""
    return mmc_wait(arrival_rate, mean_service_s, servers)["mean"] * (1 + service_cv2) / 2
