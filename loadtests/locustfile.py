"""Locust load test of the Wan2.2 service: users of `/predict` (synchronous) and of the jobs API
(submit, follow progress over SSE, download), asking for a weighted mix of step counts.

    python -m locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --api-key KEY   (from the repository root)

`python -m loadtests` runs it headless and writes a report. Beside Locust's HTTP statistics, every
finished job adds three custom entries, per step count (request type JOB): the queue wait and the
generation time that the server measured, and the end-to-end time the user saw. 429 and 503 are
rejections (request type REJECTED), which a loaded service is expected to give; anything else
that goes wrong is a failure.
"""

import codecs
import json
import math
import random
import time

import gevent
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment

from loadtests.mix import Choice, parse_mix
from serve_app.messages import JobStatus

REJECTION_STATUSES = (429, 503)


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    group = parser.add_argument_group("Wan2.2 service")
    group.add_argument("--api-key", env_var="WAN_API_KEY", default="", help="Bearer key (or WAN_API_KEY)")
    group.add_argument(
        "--steps-mix",
        default="20:2,30:4,50:3,100:1",
        help="step counts (and models) and their weights, as [model@]steps:weight,... (default: the guide's four, "
        "30 most often, on the default model)",
    )
    group.add_argument("--size", default="1280x704", help="WIDTHxHEIGHT of every video (default 1280x704)")
    group.add_argument("--frames", type=int, default=121, help="frames of every video (default 121)")
    group.add_argument(
        "--job-timeout",
        type=float,
        default=1800,
        help="seconds a user waits for one video, queue included (default 1800: above the longest job)",
    )
    group.add_argument("--think-time", type=float, default=1.0, help="seconds a user waits between its videos")
    group.add_argument(
        "--arrival-rate",
        type=float,
        default=0.0,
        help="jobs per second across all jobs-API users, as a Poisson process that does not wait for "
        "earlier jobs (open loop, for queueing measurements); 0: each user waits for its video (closed loop)",
    )
    group.add_argument(
        "--load-shape",
        choices=("steady", "ramp", "burst"),
        default="steady",
        help="steady: -u users all along (a soak when long); ramp: from 1 to -u users over the run; "
        "burst: a tenth of -u, then all of them for the middle third of the run",
    )
    group.add_argument("--samples-file", default="", help="append one JSON line per finished job here")


@events.user_error.add_listener
def fail_the_run(user_instance, exception: Exception, tb) -> None:
    # An exception in the test code is a bug that invalidates the figures: the run must fail. It
    # comes from a User's task or from its TaskSet (which holds the User).
    getattr(user_instance, "user", user_instance).environment.process_exit_code = 1


def unexpected(response) -> str:
    """What a failed request got: its status and the start of its body, or the error that left it
    without an answer (a reset connection: status 0, no body)."""
    return f"{response.status_code}: {response.text[:200] if response.text is not None else repr(response.error)}"


@events.init.add_listener
def configure(environment: Environment, **_) -> None:
    options = environment.parsed_options
    if options is None:
        return
    # FastHttpUser's default 60 s would fail every /predict and every quiet SSE stream.
    WanUser.network_timeout = options.job_timeout
    WanUser.connection_timeout = 30.0


class WanUser(FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.mix = parse_mix(options.steps_mix)
        self.width, self.height = (int(side) for side in options.size.lower().split("x"))
        self.frames = options.frames
        self.in_flight: set[str] = set()
        self.cancelled: set[str] = set()  # by on_stop, at the end of the run

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    def body(self, choice: Choice) -> dict:
        model = {"model": choice.model} if choice.model else {}
        return {
            "prompt": "a red fox running through fresh snow, cinematic",
            "width": self.width,
            "height": self.height,
            "num_frames": self.frames,
            "num_inference_steps": choice.steps,
            **model,
        }

    def pick(self) -> Choice:
        return random.choices(list(self.mix), weights=list(self.mix.values()))[0]

    def rejected(self, response) -> bool:
        """429/503 are the service saying 'not now': counted as rejections, not failures."""
        if response.status_code not in REJECTION_STATUSES:
            return False
        response.success()
        code = _error_code(response)
        self.environment.events.request.fire(
            request_type="REJECTED", name=f"{response.status_code} {code}", response_time=0, response_length=0
        )
        self.sample({"outcome": "rejected", "status": response.status_code, "code": code})
        return True

    def record(self, choice: Choice, submitted: float, details: dict) -> None:
        """The three custom statistics of a completed job, and its sample line."""
        timings = details.get("timings") or {}
        queue_s = timings.get("queued_s", 0.0)
        generation_s = sum(value for key, value in timings.items() if key != "queued_s")
        end_to_end_s = time.time() - submitted
        for name, seconds in (("queue wait", queue_s), ("generation", generation_s), ("end-to-end", end_to_end_s)):
            self.environment.events.request.fire(
                request_type="JOB", name=f"{name} [{choice.label}]", response_time=seconds * 1000, response_length=0
            )
        self.sample(
            {
                "outcome": "completed",
                "steps": choice.steps,
                "model": choice.model,
                "submitted_at": submitted,
                "queue_s": queue_s,
                "generation_s": generation_s,
                "end_to_end_s": end_to_end_s,
            }
        )

    def job_failed(self, choice: Choice, message: str) -> None:
        self.environment.events.request.fire(
            request_type="JOB",
            name=f"end-to-end [{choice.label}]",
            response_time=0,
            response_length=0,
            exception=RuntimeError(message),
        )
        self.sample({"outcome": "failed", "steps": choice.steps, "model": choice.model, "message": message})

    def sample(self, line: dict) -> None:
        path = self.environment.parsed_options.samples_file
        if path:
            line = {"user": type(self).__name__, "at": time.time(), **line}
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")


class PredictUser(WanUser):
    """The hosted API's synchronous call: one video per request, returned base64-encoded."""

    weight = 1

    @task
    def predict(self) -> None:
        choice = self.pick()
        submitted = time.time()
        with self.client.post(
            "/predict", json=self.body(choice), headers=self.headers, catch_response=True
        ) as response:
            if self.rejected(response):
                return
            if response.status_code != 200:
                response.failure(unexpected(response))
                self.job_failed(choice, f"/predict answered {response.status_code}")
                return
            payload = response.json()
            if not payload.get("video_base64"):
                response.failure("no video in the response")
                return
        self.record(choice, submitted, payload["details"])


class JobsUser(WanUser):
    """The jobs API: submit, follow the progress events, download the MP4."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        self.next_arrival = time.monotonic()

    def wait_time(self) -> float:
        rate = self.environment.parsed_options.arrival_rate
        if not rate:
            return super().wait_time()
        # Each user's arrivals are a Poisson process of rate/users; together they are one of `rate`.
        users = max(1, self.environment.runner.user_count)
        self.next_arrival = max(self.next_arrival, time.monotonic()) + random.expovariate(rate / users)
        return max(0.0, self.next_arrival - time.monotonic())

    @task
    def submit(self) -> None:
        choice = self.pick()
        submitted = time.time()
        body = self.body(choice)
        with self.client.post("/v1/videos", json=body, headers=self.headers, catch_response=True) as response:
            if self.rejected(response):
                return
            if response.status_code != 202:
                response.failure(unexpected(response))
                return
            job_id = response.json()["id"]
        self.in_flight.add(job_id)
        if self.environment.parsed_options.arrival_rate:
            follower = gevent.spawn(self.follow, job_id, choice, submitted)
            follower.link_exception(self.crashed)
        else:
            self.follow(job_id, choice, submitted)

    def follow(self, job_id: str, choice: Choice, submitted: float) -> None:
        job = self.events_until_done(job_id)
        if job is None or job["id"] in self.cancelled:
            return
        if job["status"] != "completed":
            self.in_flight.discard(job_id)
            self.job_failed(choice, f"job {job_id} {job['status']}: {job.get('error')}")
            return
        with self.client.get(
            f"/v1/videos/{job_id}/content", name="/v1/videos/{id}/content", headers=self.headers, catch_response=True
        ) as response:
            if response.status_code != 200 or not response.content:
                response.failure(f"{response.status_code}: no video")
                return
        self.in_flight.discard(job_id)
        self.record(choice, submitted, job["details"])

    def events_until_done(self, job_id: str) -> dict | None:
        """The job as its last server-sent event gave it (None when the stream broke)."""
        job = None
        with self.client.get(
            f"/v1/videos/{job_id}/events",
            name="/v1/videos/{id}/events",
            headers=self.headers,
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(unexpected(response))
                return None
            buffer, text = "", codecs.getincrementaldecoder("utf-8")()
            for chunk in response.iter_content(chunk_size=4096, decode_content=False):
                buffer += text.decode(chunk)  # a chunk may end inside a character
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    if line.startswith("data:"):
                        job = json.loads(line[5:])
            if job is None or not JobStatus(job["status"]).is_terminal:
                response.failure(f"the event stream of {job_id} ended before the job did")
                return None
        return job

    def crashed(self, follower: gevent.Greenlet) -> None:
        """A follower greenlet's exception, reported like those of tasks (Locust sees only those)."""
        error = follower.exception
        self.environment.events.user_error.fire(user_instance=self, exception=error, tb=error.__traceback__)

    def on_stop(self) -> None:
        # The run is over: free the GPUs from the jobs nobody will wait for.
        for job_id in list(self.in_flight):
            self.cancelled.add(job_id)
            self.client.post(f"/v1/videos/{job_id}/cancel", name="/v1/videos/{id}/cancel", headers=self.headers)


class WanShape(LoadTestShape):
    """--load-shape over the run's --run-time, with -u users at most."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        users, rate, total = options.num_users or 1, options.spawn_rate or 1, options.run_time or math.inf
        elapsed = self.get_run_time()
        if elapsed >= total:
            return None
        if options.load_shape == "ramp" and total < math.inf:
            return max(1, math.ceil(users * elapsed / total)), rate
        if options.load_shape == "burst" and total < math.inf:
            burst = total / 3 <= elapsed < 2 * total / 3
            return (users if burst else max(1, users // 10)), max(rate, users)
        return users, rate


def _error_code(response) -> str:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
