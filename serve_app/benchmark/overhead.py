"""Serving overhead: the wall time of a `/predict` through Ray Serve against the same generation
called in-process. Tiny model, 256x256, 25 frames, 8 steps by default; prints medians.

    python -m serve_app.benchmark.overhead [--runs 7] [--size 256] [--frames 25] [--steps 8]
"""

import argparse
import base64
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

THREADS = "2"
T = TypeVar("T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    opts = parser.parse_args()

    # Same torch threads here and in the replica; set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", THREADS)
    import ray
    import torch
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import AppArgs
    from serve_app.engine.generator import Generator
    from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest

    torch.set_num_threads(int(THREADS))
    body = {
        "prompt": "a lighthouse on a cliff at dusk, waves below",
        "height": opts.size,
        "width": opts.size,
        "num_frames": opts.frames,
        "num_inference_steps": opts.steps,
        "seed": 1,
    }
    args = AppArgs(model="tiny", device="cpu", cache_dir=Path(tempfile.mkdtemp()), allow_unauthenticated=True)

    generator = Generator(args)
    request = GenerationRequest(
        **body, negative_prompt=DEFAULT_NEGATIVE_PROMPT, guidance_scale=5.0, fps=24, model="tiny", shift=3.0
    )
    generator.runner.run(request)  # warm-up
    local = [_timed(lambda: generator.runner.run(request))[0] for _ in range(opts.runs)]
    local_video = generator.runner.run(request).video_mp4

    ray.init(
        num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": THREADS}}
    )
    serve.start(http_options={"host": "127.0.0.1", "port": opts.port})
    serve.run(build_app(args), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{opts.port}/predict"
    with httpx.Client(timeout=600) as client:
        client.post(url, json=body).raise_for_status()  # warm-up
        calls = [_timed(lambda: client.post(url, json=body).raise_for_status()) for _ in range(opts.runs)]
    served = [wall for wall, _ in calls]
    # What the replica itself spent generating, from the timings it reports in `details`.
    in_replica = [sum(response.json()["details"]["timings"].values()) for _, response in calls]
    served_video = base64.b64decode(calls[-1][1].json()["video_base64"])
    serve.shutdown()
    ray.shutdown()

    local_s, served_s = statistics.median(local), statistics.median(served)
    replica_s = statistics.median(in_replica)
    plumbing_s = statistics.median(wall - gen for wall, gen in zip(served, in_replica, strict=True))
    print(
        f"tiny model, {opts.size}x{opts.size}, {opts.frames} frames, {opts.steps} steps, "
        f"median of {opts.runs} runs, {THREADS} torch threads"
    )
    print(f"  in-process generation : {local_s * 1000:8.1f} ms")
    print(f"  POST /predict (Serve) : {served_s * 1000:8.1f} ms")
    print(f"  serving overhead      : {(served_s - local_s) * 1000:8.1f} ms ({(served_s / local_s - 1) * 100:.1f} %)")
    print(f"    generation in the replica (its stage timings) : {replica_s * 1000:8.1f} ms")
    print(f"    HTTP, proxy, handle, base64 (wall - stages)   : {plumbing_s * 1000:8.1f} ms")
    print(f"  same video bytes      : {local_video == served_video}")


def _timed(call: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


if __name__ == "__main__":
    main()
