"""The GPU table of docs/performance.md, generated from the GPU check's JSON files in
benchmarks/results/: one row per GPU class, the newest run of that class; "not measured" where
no run exists. Every GPU figure in the docs comes from those files.

    python -m serve_app.benchmark.results            # rewrite the table in docs/performance.md
    python -m serve_app.benchmark.results --check    # exit 1 if the table and the files disagree
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- gpu-table:start -->", "<!-- gpu-table:end -->"
# GPU classes by memory, GiB: the largest card memory each holds.
CLASSES = {"24 GB (RTX 4090, L4)": 26, "48 GB (L40, L40S)": 52, "80 GB (A100, H100)": 96, "141 GB (H200)": 160}
STEPS = ("20", "30", "50", "100")
HEADER = (
    "| GPU class | measured on | memory plan | s a step | s per job at 20 / 30 / 50 / 100 steps "
    "| peak GiB (predicted) | ratio to floor | file |\n|---|---|---|---|---|---|---|---|"
)


def gpu_class(memory_gib: float) -> str:
    return next(name for name, limit in CLASSES.items() if memory_gib <= limit)


def newest_by_class(folder: Path = RESULTS) -> dict[str, tuple[str, dict[str, Any]]]:
    """The newest run of each GPU class: (file name, figures). A run on a card of the class comes
    before one on a larger card capped to its memory (`--gpu-gib`); then the newest by start time."""
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json")):
        figures = json.loads(path.read_text())
        if "gpu_memory_gib" not in figures:  # a CPU run of the check
            continue
        name = gpu_class(figures["gpu_memory_gib"])
        if name not in runs or _rank(figures) > _rank(runs[name][1]):
            runs[name] = (path.name, figures)
    return runs


def _rank(figures: dict[str, Any]) -> tuple[bool, str]:
    return "gpu_gib_cap" not in figures, figures["started"]


def row(name: str, run: tuple[str, dict[str, Any]] | None) -> str:
    if run is None:
        return f"| {name} | not measured | not measured | not measured | not measured | not measured | not measured | |"
    file, figures = run
    default = figures.get("default", {})
    gpu = figures["gpu"]
    if "gpu_gib_cap" in figures:
        gpu = f"{gpu} capped at {figures['gpu_gib_cap']:g} GiB (its speed, not the class's)"
    if "step_s" not in default:
        reason = default.get("error") or default.get("skipped") or "no default section"
        return f"| {name} | {gpu} | not measured ({reason[:60]}) | | | | | {file} |"
    per_job = " / ".join(f"{default['seconds_per_job'][steps]:g}" for steps in STEPS)
    peak = f"{default['peak_gpu_memory_gib']} ({default['predicted_peak_gib']})"
    return (
        f"| {name} | {gpu} | {figures['plan']} | {default['step_s']:.3g} | {per_job} | {peak} "
        f"| {default['ratio_to_floor']}x | [{file}](../benchmarks/results/{file}) |"
    )


def table(folder: Path = RESULTS) -> str:
    runs = newest_by_class(folder)
    return "\n".join([HEADER, *(row(name, runs.get(name)) for name in CLASSES)])


def with_table(document: str, generated: str) -> str:
    before, rest = document.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{generated}\n{END}{after}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the table is up to date")
    opts = parser.parse_args(argv)
    document = DOC.read_text()
    updated = with_table(document, table())
    if opts.check:
        if updated != document:
            sys.exit(f"{DOC} is out of date with {RESULTS}: run python -m serve_app.benchmark.results")
        return
    DOC.write_text(updated)


if __name__ == "__main__":
    main()
