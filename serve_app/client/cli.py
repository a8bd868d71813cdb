"""`wan-client`: make a video from the command line. It replaces the hosted API's
`python3 test_inference.py`: `wan-client generate "A cat dancing on a stage"` is all it takes."""

import argparse
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from serve_app.api.protocol import LoraRequest, VideoRequest, field_bounds
from serve_app.api.resources import Video
from serve_app.client.api import WanClient, WanError
from serve_app.limits import MAX_LORAS, SIZE_MULTIPLE
from serve_app.messages import JobStatus


def _range(field: str, model: type[BaseModel] = VideoRequest) -> str:
    """A request field's bounds and default, as the service's request model has them (steps,
    guidance and shift default to the model's, within its own limits: `wan-client models`)."""
    bounds = field_bounds(model)[field]
    low = bounds.get("minimum", bounds.get("exclusiveMinimum"))
    default = "the model's" if bounds.get("default") is None else bounds["default"]
    return f"{low}-{bounds['maximum']} (default {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wan-client",
        description="Generate videos with a Wan2.2 service. The URL and key come from WAN_API_URL "
        "(default http://127.0.0.1:8000) and WAN_API_KEY, or from --url and --api-key.",
    )
    parser.add_argument("--url", help="service URL (default: $WAN_API_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: $WAN_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate a video and save it")
    generate.add_argument("prompt", help="what the video shows")
    generate.add_argument("--negative-prompt", help="what it should not show (default: the Wan2.2 authors')")
    generate.add_argument("--height", type=int, help=f"multiple of {SIZE_MULTIPLE}, {_range('height')}")
    generate.add_argument("--width", type=int, help=f"multiple of {SIZE_MULTIPLE}, {_range('width')}")
    generate.add_argument("--num-frames", type=int, help=f"4n+1, {_range('num_frames')}")
    generate.add_argument("--model", help="a served model's id (`wan-client models`; default: the server's default)")
    generate.add_argument("--num-inference-steps", type=int, help=_range("num_inference_steps"))
    generate.add_argument("--guidance-scale", type=float, help=_range("guidance_scale"))
    generate.add_argument("--shift", type=float, help=_range("shift"))
    generate.add_argument("--fps", type=int, help=_range("fps"))
    generate.add_argument("--seed", type=int, help="for a reproducible video (default: drawn, and reported)")
    generate.add_argument(
        "--speed-mode", choices=("quality", "fast"), help="fast: step caching, quicker, less detail (default quality)"
    )
    generate.add_argument(
        "--lora",
        action="append",
        type=_lora,
        dest="loras",
        metavar="PATH[:SCALE]",
        help=f"a LoRA adapter: a name the server registered (or, where it allows them, a hub id or an https URL), "
        f"with its scale {_range('scale', LoraRequest)}; repeatable, up to {MAX_LORAS}",
    )
    generate.add_argument("--image", help="first frame: a file or an http(s) URL (text+image to video)")
    generate.add_argument("-o", "--output", type=Path, default=Path("output.mp4"), help="MP4 to write")
    generate.add_argument("--thumbnail", type=Path, help="also write the first frame as a JPEG here")
    generate.add_argument("--details", type=Path, help="also write the job (every parameter, the seed) as JSON")

    for name, text in [("status", "show a job"), ("cancel", "cancel a job")]:
        commands.add_parser(name, help=text).add_argument("job_id")
    commands.add_parser("list", help="your recent jobs")
    commands.add_parser("models", help="the served models, their defaults and limits")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with WanClient(args.url, args.api_key) as client:
        try:
            if args.command == "generate":
                return _generate(client, args)
            if args.command == "list":
                for job in client.list_jobs().data:
                    print(f"{job.id}  {job.status:<11} {job.progress:>3}%  {job.size}  {job.prompt[:60]}")
            elif args.command == "models":
                for model in client.models():
                    defaults, steps = model["defaults"], model["limits"]["num_inference_steps"]
                    print(
                        f"{model['id']}  {defaults['num_inference_steps']} steps ({steps['min']}-{steps['max']}), "
                        f"guidance {defaults['guidance_scale']:g}, shift {defaults['shift']:g} at 1280x704"
                    )
            else:
                action = client.get if args.command == "status" else client.cancel
                print(action(args.job_id).model_dump_json(indent=2))
            return 0
        except WanError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1


def _generate(client: WanClient, args: argparse.Namespace) -> int:
    params = {
        name: getattr(args, name)
        for name in (
            "model", "negative_prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale",
            "shift", "speed_mode", "loras",
        )
    }  # fmt: skip
    started = time.monotonic()
    job = client.submit(args.prompt, image=args.image, fps=args.fps, seed=args.seed, **params)
    print(f"job {job.id} queued", file=sys.stderr)
    bar = ProgressBar()
    try:
        job = client.wait(job.id, bar.show)
    except KeyboardInterrupt:
        client.cancel(job.id)
        print(f"\ncancelled job {job.id}", file=sys.stderr)
        return 130
    bar.end()
    if job.status != JobStatus.COMPLETED:
        reason = job.error.message if job.error else f"the job was {job.status}"
        print(f"error: {reason}", file=sys.stderr)
        return 1
    args.output.write_bytes(client.download(job.id))
    if args.thumbnail:
        args.thumbnail.write_bytes(client.download(job.id, "thumbnail"))
    if args.details:
        args.details.write_text(job.model_dump_json(indent=2))
    took = time.monotonic() - started
    print(
        f"saved {args.output}: {job.size}, {job.seconds} s, seed {job.details.seed}, in {took:.1f} s", file=sys.stderr
    )
    return 0


def _lora(text: str) -> tuple[str, float] | str:
    """PATH[:SCALE]: a URL's own colons are the path's (its last part is no number)."""
    path, _, scale = text.rpartition(":")
    try:
        return (path, float(scale)) if path else text
    except ValueError:
        return text


class ProgressBar:
    """One line on a terminal, redrawn; one line per change otherwise (logs, pipes)."""

    def __init__(self, width: int = 30) -> None:
        self._width = width
        self._tty = sys.stderr.isatty()
        self._last = ""
        self._started: float | None = None

    def show(self, job: Video) -> None:
        if job.status == JobStatus.QUEUED:
            line = f"queued, position {job.queue_position}"
        else:
            if self._started is None and job.status == JobStatus.IN_PROGRESS:
                self._started = time.monotonic()
            filled = self._width * job.progress // 100
            line = f"[{'#' * filled}{'-' * (self._width - filled)}] {job.progress:3d}%  {job.status}"
            if self._started is not None and 0 < job.progress < 100:
                elapsed = time.monotonic() - self._started
                line += f"  about {_clock(elapsed * (100 - job.progress) / job.progress)} left"
        if line != self._last:
            print(("\r\033[K" if self._tty else "") + line, end="" if self._tty else "\n", file=sys.stderr, flush=True)
            self._last = line

    def end(self) -> None:
        if self._tty:
            print(file=sys.stderr)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"
