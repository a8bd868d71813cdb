"""The report of one load test run: a Markdown table of latency percentiles per step count beside
the guide's documented L40 table, outcomes, what queueing theory predicts (open-loop runs), and
two plots. Reads the files the runner collected in the report folder."""

import csv
import json
import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: files only, whatever the display
from matplotlib.ticker import MaxNLocator

from loadtests.mix import Choice
from loadtests.queueing import mgc_mean_wait, mmc_wait
from serve_app.engine.simulator import GUIDE_L40_S, L40_REFERENCE_VOLUME

SAMPLES = "jobs.jsonl"
REPLICAS = "replicas.csv"
RUN = "run.json"
LOCUST_STATS = "locust_stats.csv"
LOCUST_FAILURES = "locust_failures.csv"
LOCUST_EXCEPTIONS = "locust_exceptions.csv"
LATENCY_PLOT = "latency.png"
# A job that waited longer than this for a replica waited; below it is dispatch overhead.
WAITED_S = 0.5
QUEUE_PLOT = "queue_wait.png"


def load_samples(folder: Path) -> list[dict]:
    path = folder / SAMPLES
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load_replicas(folder: Path) -> list[tuple[float, int]]:
    path = folder / REPLICAS
    if not path.exists():
        return []
    with path.open() as rows:
        return [(float(row["at"]), int(row["generator_replicas"])) for row in csv.DictReader(rows)]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "unstable"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s"


def by_choice(completed: list[dict]) -> dict[Choice, list[dict]]:
    """The completed jobs by kind (model, steps), the default model's first, fewest steps first."""
    kinds = sorted(
        {Choice(job["steps"], job.get("model")) for job in completed}, key=lambda c: (c.model or "", c.steps)
    )
    return {kind: [job for job in completed if Choice(job["steps"], job.get("model")) == kind] for kind in kinds}


def latency_table(completed: list[dict], run: dict) -> list[str]:
    scale = (run.get("simulator") or {}).get("time_scale")
    width, height = (int(side) for side in run["size"].lower().split("x"))
    guide_note = f"guide (L40) x {scale:g}" if scale else "guide (L40)"
    lines = [
        f"| jobs of | jobs | end-to-end p50 | p95 | p99 | queue wait p50 | p95 | generation p50 | {guide_note} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for choice, jobs in by_choice(completed).items():
        steps = choice.steps
        e2e = percentiles([job["end_to_end_s"] for job in jobs])
        queue = percentiles([job["queue_s"] for job in jobs])
        generation = statistics.median(job["generation_s"] for job in jobs)
        # The guide's table is the default model's (Wan2.2, 50-step recipe).
        low, high = (None, None) if choice.model else GUIDE_L40_S.get(steps, (None, None))
        if low is None:
            guide = "not in the guide"
        else:
            factor = scale or 1
            guide = f"{fmt(low * factor)} - {fmt(high * factor)}"
        lines.append(
            f"| {choice.label} | {len(jobs)} | {fmt(e2e[0])} | {fmt(e2e[1])} | {fmt(e2e[2])} | {fmt(queue[0])} | "
            f"{fmt(queue[1])} | {fmt(generation)} | {guide} |"
        )
    if width * height * run["frames"] != L40_REFERENCE_VOLUME:
        lines.append("")
        lines.append(f"The guide's times are for 1280x704x121; this run asked for {run['size']}x{run['frames']}.")
    return lines


def outcome_lines(samples: list[dict], folder: Path) -> list[str]:
    counts: dict[str, int] = {}
    for sample in samples:
        key = sample["outcome"]
        if key == "rejected":
            key = f"rejected ({sample['status']} {sample['code']})"
        counts[key] = counts.get(key, 0) + 1
    lines = [f"- {name}: {count}" for name, count in sorted(counts.items())] or ["- no job finished"]
    http_failures = 0
    if (folder / LOCUST_STATS).exists():
        with (folder / LOCUST_STATS).open() as rows:
            rows = csv.DictReader(rows)
            http_failures = sum(int(row["Failure Count"]) for row in rows if row["Name"] == "Aggregated")
    lines.append(f"- failures counted by Locust (HTTP errors, failed jobs, broken streams): {http_failures}")
    if (folder / LOCUST_EXCEPTIONS).exists():
        with (folder / LOCUST_EXCEPTIONS).open() as rows:
            for row in csv.DictReader(rows):
                lines.append(f"- exception in the load test itself, {row['Count']} x: {row['Message'][:200]}")
    if (folder / LOCUST_FAILURES).exists():
        with (folder / LOCUST_FAILURES).open() as rows:
            for row in csv.DictReader(rows):
                lines.append(f"  - {row['Occurrences']} x {row['Method']} {row['Name']}: {row['Error'][:200]}")
    return lines


def steady_window(completed: list[dict], replicas: list[tuple[float, int]]) -> tuple[list[dict], int]:
    """The part of an autoscaled run that a fixed-size queueing model describes, and its replica
    count: jobs submitted once the replicas had reached their highest count and the backlog of
    the scale-up had drained (a job went through without waiting)."""
    if not replicas:
        return completed, 0
    most = max(count for _, count in replicas)
    reached = next(at for at, count in replicas if count == most)
    later = sorted((job for job in completed if job["submitted_at"] >= reached), key=lambda job: job["submitted_at"])
    drained = next((i for i, job in enumerate(later) if job["queue_s"] < WAITED_S), len(later))
    return later[drained:], most


def queueing_lines(samples: list[dict], replicas: list[tuple[float, int]], run: dict) -> list[str]:
    completed = [sample for sample in samples if sample["outcome"] == "completed"]
    window, servers = steady_window(completed, replicas)
    if len(window) < 10 or not servers:
        return ["Too few jobs in the steady part of the run for a comparison (10 needed)."]
    submitted = sorted(job["submitted_at"] for job in window)
    arrival_rate = (len(submitted) - 1) / (submitted[-1] - submitted[0])
    service = [job["generation_s"] for job in window]
    mean_service = statistics.fmean(service)
    cv2 = statistics.pvariance(service) / mean_service**2
    theory = mmc_wait(arrival_rate, mean_service, servers)
    waits = [job["queue_s"] for job in window]
    measured_p50, measured_p95, _ = percentiles(waits)
    return [
        f"Steady part: {len(window)} jobs submitted once {servers} replicas were running; measured arrival rate "
        f"{arrival_rate:.3f} jobs/s (asked for {run.get('arrival_rate', 0):g}), mean service time "
        f"{mean_service:.2f} s (squared coefficient of variation {cv2:.2f}), utilisation "
        f"{theory['utilisation']:.0%}.",
        "",
        "| queue wait | measured | M/M/c | M/G/c (Allen-Cunneen) |",
        "|---|---:|---:|---:|",
        f"| mean | {statistics.fmean(waits):.2f} s | {theory['mean']:.2f} s | "
        f"{mgc_mean_wait(arrival_rate, mean_service, servers, cv2):.2f} s |",
        f"| p50 | {measured_p50:.2f} s | {theory['p50']:.2f} s | |",
        f"| p95 | {measured_p95:.2f} s | {theory['p95']:.2f} s | |",
        f"| share of jobs that waited over {WAITED_S:g} s | {sum(w > WAITED_S for w in waits) / len(waits):.0%} | "
        f"{theory['p_wait']:.0%} | |",
    ]


def plot_latency(folder: Path, completed: list[dict], replicas: list[tuple[float, int]], started: float) -> None:
    figure = Figure(figsize=(9, 4.5))
    axis = figure.subplots()
    for choice, jobs in by_choice(completed).items():
        done = [job["submitted_at"] + job["end_to_end_s"] - started for job in jobs]
        axis.scatter(done, [job["end_to_end_s"] for job in jobs], s=14, label=choice.label)
    axis.set_xlabel("seconds since the start of the run (job finished)")
    axis.set_ylabel("end-to-end seconds")
    axis.set_ylim(bottom=0)
    axis.legend(loc="upper left", fontsize=8)
    if replicas:
        twin = axis.twinx()
        twin.step([at - started for at, _ in replicas], [count for _, count in replicas], where="post", color="k")
        twin.set_ylabel("generator replicas (black line)")
        twin.set_ylim(0, max(count for _, count in replicas) + 1)
        twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title("End-to-end latency over time, with the replica count")
    figure.tight_layout()
    figure.savefig(folder / LATENCY_PLOT, dpi=100)


def plot_queue_wait(folder: Path, completed: list[dict]) -> None:
    figure = Figure(figsize=(9, 4))
    axis = figure.subplots()
    axis.hist([job["queue_s"] for job in completed], bins=40, color="tab:blue")
    axis.set_xlabel("seconds in the queue before a replica took the job")
    axis.set_ylabel("jobs")
    axis.set_title("Queue wait distribution")
    figure.tight_layout()
    figure.savefig(folder / QUEUE_PLOT, dpi=100)


def write_report(folder: Path) -> Path:
    """Write `report.md` and the plots into `folder`; returns the report's path."""
    run = json.loads((folder / RUN).read_text())
    samples = load_samples(folder)
    replicas = load_replicas(folder)
    completed = [sample for sample in samples if sample["outcome"] == "completed"]
    lines = [
        "# Load test report",
        "",
        f"- target: {run['host']}, model `{run.get('model')}`"
        + (f", **capacity simulator** ({run['simulator']['latency_model']})" if run.get("simulator") else ""),
        f"- {run['run_time_s']:g} s, {run['users']} users ({', '.join(run['user_classes'])}), "
        f"load shape {run['load_shape']}, "
        + (f"open loop at {run['arrival_rate']:g} jobs/s" if run.get("arrival_rate") else "closed loop"),
        f"- every video {run['size']}x{run['frames']}, step mix {run['steps_mix']}",
        f"- generator replicas seen: {', '.join(sorted({str(count) for _, count in replicas})) or 'unknown'}",
        f"- command: `{run['command']}`",
        "",
        "## Latency per step count",
        "",
        *(latency_table(completed, run) if completed else ["No job completed."]),
        "",
        "## Outcomes",
        "",
        *outcome_lines(samples, folder),
    ]
    if run.get("arrival_rate"):
        lines += ["", "## Queue wait against queueing theory", "", *queueing_lines(samples, replicas, run)]
    if completed:
        plot_latency(folder, completed, replicas, run["started_at"])
        plot_queue_wait(folder, completed)
        lines += ["", "## Plots", "", f"![latency over time]({LATENCY_PLOT})", "", f"![queue wait]({QUEUE_PLOT})"]
    report = folder / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
