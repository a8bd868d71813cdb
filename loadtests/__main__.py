"""Run the Locust load test headless against a running service, for a bounded time, and write a
report folder: Locust's CSV, JSON and HTML, one JSON line per job, the generator replica count
over time (from `/readyz`), `report.md` and its plots.

    python -m loadtests --host http://127.0.0.1:8000 --api-key KEY --users 8 --run-time 30m

Exits with Locust's status: 1 when any request or job failed (429/503 are rejections, not
failures). Options after `--` go to Locust as they are.
"""

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

from loadtests.mix import parse_mix
from loadtests.report import REPLICAS, RUN, SAMPLES, write_report

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
ROOT = Path(__file__).resolve().parent.parent


def parse_duration(text: str) -> float:
    """Locust's --run-time syntax: 90, 90s, 5m, 1h30m."""
    if text.isdigit():
        return float(text)
    total, number = 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in "hms" and number:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 5m or 1h30m")
    if number:
        raise argparse.ArgumentTypeError(f"{text!r}: give a unit (s, m or h) after {number}")
    return total


def size(text: str) -> str:
    if not re.fullmatch(r"\d+x\d+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1280x704")
    return text


def steps_mix(text: str) -> str:
    try:
        parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def redacted(argv: list[str]) -> list[str]:
    """The command line without the API key's value, for the report."""
    shown = []
    for arg in argv:
        if shown and shown[-1] == "--api-key":
            arg = "REDACTED"
        elif arg.startswith("--api-key="):
            arg = "--api-key=REDACTED"
        shown.append(arg)
    return shown


def readiness(host: str) -> dict:
    try:
        response = httpx.get(f"{host}/readyz", timeout=10)
    except httpx.HTTPError:
        return {}
    return response.json() if response.status_code == 200 else {}


def service_status(host: str, api_key: str) -> dict:
    """`/v1/status`: the model served and how each generator replica runs it."""
    try:
        response = httpx.get(f"{host}/v1/status", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    except httpx.HTTPError:
        return {}
    return response.json() if response.status_code == 200 else {}


def watch_replicas(host: str, path: Path, stop: threading.Event, every_s: float) -> None:
    with path.open("w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["at", "generator_replicas"])
        while not stop.is_set():
            rows.writerow([round(time.time(), 2), readiness(host).get("generator_replicas", 0)])
            out.flush()
            stop.wait(every_s)


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    """`command`: how the run was started, for the report (default: this module's command line)."""
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="python -m loadtests", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", required=True, help="base URL of the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("WAN_API_KEY", ""), help="default: $WAN_API_KEY")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--spawn-rate", type=float, default=1.0, help="users started per second")
    parser.add_argument("--run-time", type=parse_duration, default="10m", help="how long to load: 60s, 10m, 2h")
    parser.add_argument("--user-classes", nargs="+", default=["JobsUser", "PredictUser"])
    parser.add_argument("--load-shape", choices=("steady", "ramp", "burst"), default="steady")
    parser.add_argument("--steps-mix", type=steps_mix, default="20:2,30:4,50:3,100:1", help="steps:weight,...")
    parser.add_argument("--size", type=size, default="1280x704", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--arrival-rate", type=float, default=0.0, help="jobs/s, open loop (JobsUser only)")
    parser.add_argument("--think-time", type=float, default=1.0)
    parser.add_argument("--job-timeout", type=float, default=1800)
    parser.add_argument("--replicas-every", type=float, default=2.0, help="seconds between replica counts")
    parser.add_argument("--out", type=Path, help="report folder (default: loadtests/reports/<date-time>)")
    opts = parser.parse_args(own)
    run_time_s = opts.run_time
    host = opts.host.rstrip("/")
    out = opts.out or Path("loadtests/reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / SAMPLES).unlink(missing_ok=True)

    ready = readiness(host)
    if not ready:
        print(f"{host}/readyz does not answer 'ready': is the service up, with a generator replica?", file=sys.stderr)
        return 2
    # The key goes to Locust through the environment, not its command line; the report omits it.
    locust = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
        "--users", str(opts.users), "--spawn-rate", str(opts.spawn_rate), "--run-time", f"{run_time_s:.0f}s",
        "--load-shape", opts.load_shape, "--steps-mix", opts.steps_mix, "--size", opts.size,
        "--frames", str(opts.frames), "--arrival-rate", str(opts.arrival_rate),
        "--think-time", str(opts.think_time), "--job-timeout", str(opts.job_timeout),
        "--samples-file", str(out / SAMPLES), "--csv", str(out / "locust"), "--csv-full-history",
        "--json-file", str(out / "locust"), "--html", str(out / "locust.html"), "--only-summary",
        *extra, *opts.user_classes,
    ]  # fmt: skip
    run = {
        "host": host,
        "model": None,
        "simulator": None,
        "users": opts.users,
        "user_classes": opts.user_classes,
        "run_time_s": run_time_s,
        "load_shape": opts.load_shape,
        "steps_mix": opts.steps_mix,
        "size": opts.size,
        "frames": opts.frames,
        "arrival_rate": opts.arrival_rate,
        "command": command or shlex.join(["python", "-m", "loadtests", *redacted(argv)]),
        "started_at": time.time(),
    }
    (out / RUN).write_text(json.dumps(run, indent=2))

    stop = threading.Event()
    watcher = threading.Thread(target=watch_replicas, args=(host, out / REPLICAS, stop, opts.replicas_every))
    watcher.start()
    # The locustfile imports `loadtests`: the repository's root goes on Locust's path.
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    try:
        env = {**os.environ, "WAN_API_KEY": opts.api_key, "PYTHONPATH": python_path}
        status = subprocess.run(locust, env=env).returncode
    finally:
        stop.set()
        watcher.join()
    # After the run, the generators have reported how they run (the simulator its time scale).
    served = service_status(host, opts.api_key)
    run["model"] = served.get("model")
    run["simulator"] = next(
        # A simulated generator's checkpoint says so (its `model` is the served model's id).
        (runtime for runtime in served.get("generators", {}).values() if runtime.get("checkpoint") == "simulated"),
        None,
    )
    (out / RUN).write_text(json.dumps(run, indent=2))
    report = write_report(out)
    print(f"\nReport: {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
