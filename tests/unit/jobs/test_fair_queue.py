"""The order jobs enter Serve's queue in (`serve_app.jobs.fair_queue`): fair between keys, and the
queue positions that order gives. Pure logic, no Ray; `test_jobs.py` runs it through the Jobs
deployment, `tests/jobs/test_fairness.py` on the cluster."""

from serve_app.jobs.fair_queue import FairQueue


def enter(queue: FairQueue, slots: int | None) -> list[str]:
    """Send Serve every job it has slots for, as the dispatcher does."""
    entered = []
    while (job := queue.next(slots)) is not None:
        entered.append(job)
    return entered


def run_all(queue: FairQueue, slots: int, in_serve: list[str]) -> list[str]:
    """The order jobs start in when one generator takes them one at a time, first come first
    served from Serve's queue (which holds `in_serve` now), until none is left."""
    order: list[str] = []
    while in_serve or (in_serve := enter(queue, slots)):
        job = in_serve.pop(0)
        queue.start(job)
        order.append(job)
        queue.remove(job)
        in_serve += enter(queue, slots)
    return order


def test_a_key_that_comes_later_waits_for_one_slot_not_for_every_job_of_the_key_before_it():
    queue = FairQueue()
    for i in range(20):
        queue.add(f"a{i}", "key-a")
    in_serve = enter(queue, slots=4)
    assert in_serve == ["a0", "a1", "a2", "a3"]
    queue.add("b0", "key-b")
    order = run_all(queue, 4, in_serve)
    # key-a's 4 filled the slots before b0 came; b0 takes the first slot that frees.
    assert order == ["a0", "a1", "a2", "a3", "b0", *(f"a{i}" for i in range(4, 20))]


def test_a_key_alone_fills_every_slot_and_no_more():
    queue = FairQueue()
    for i in range(10):
        queue.add(f"a{i}", "key-a")
    assert enter(queue, 8) == [f"a{i}" for i in range(8)]  # Serve sees 8: it scales out to its 8 replicas
    queue.remove("a3")
    assert enter(queue, 8) == ["a8"]


def test_keys_with_many_jobs_take_turns_and_one_that_comes_later_joins_the_round_being_served():
    queue = FairQueue()
    for owner in ("key-a", "key-b"):
        for i in range(3):
            queue.add(f"{owner[-1]}{i}", owner)
    assert run_all(queue, 1, []) == ["a0", "b0", "a1", "b1", "a2", "b2"]

    queue = FairQueue()
    for i in range(4):
        queue.add(f"a{i}", "key-a")
    assert enter(queue, 3) == ["a0", "a1", "a2"]
    queue.add("b0", "key-b")
    queue.add("c0", "key-c")
    queue.remove("a0")
    queue.remove("a1")
    # key-a's 4th job waits behind one job of each key that came later.
    assert enter(queue, 3) == ["b0", "c0"]


def test_a_key_whose_jobs_are_done_gets_no_credit_for_the_turns_it_missed():
    queue = FairQueue()
    queue.add("a0", "key-a")
    for i in range(5):
        queue.add(f"b{i}", "key-b")
    for job in ["a0", "b0", "b1"]:
        assert enter(queue, 1) == [job]
        queue.remove(job)
    assert enter(queue, 1) == ["b2"]
    # key-a comes back while key-b's 3rd turn is served: it joins that round, and takes turns from there.
    queue.add("a1", "key-a")
    queue.add("a2", "key-a")
    assert run_all(queue, 1, ["b2"]) == ["b2", "a1", "b3", "a2", "b4"]


def test_no_limit_sends_every_job_at_once_in_turn_order():
    queue = FairQueue()
    for i, owner in enumerate(["key-a", "key-a", "key-b"]):
        queue.add(f"job{i}", owner)
    assert enter(queue, None) == ["job0", "job2", "job1"]


def test_positions_are_the_order_jobs_start_in():
    queue = FairQueue()
    for i in range(5):
        queue.add(f"a{i}", "key-a")
    assert enter(queue, 2) == ["a0", "a1"]
    queue.start("a0")  # running; a1 queued in Serve
    queue.add("b0", "key-b")
    queue.add("b1", "key-b")
    positions = {job: queue.position(job) for job in ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]}
    assert positions == {"a0": None, "a1": 1, "b0": 2, "a2": 3, "b1": 4, "a3": 5, "a4": 6}
    order = run_all(queue, 2, ["a0", "a1"])
    assert order[1:] == sorted((job for job in positions if positions[job]), key=lambda job: positions[job])
    assert queue.position("a4") is None and queue.position("unknown") is None


def test_a_job_that_leaves_its_line_frees_its_place_and_a_new_key_goes_ahead_of_a_busy_one():
    queue = FairQueue()
    for i in range(3):
        queue.add(f"a{i}", "key-a")
    assert enter(queue, 1) == ["a0"]
    assert [queue.position(job) for job in ["a0", "a1", "a2"]] == [1, 2, 3]
    queue.remove("a1")  # cancelled while waiting
    assert queue.position("a2") == 2 and queue.position("a1") is None
    queue.add("b0", "key-b")
    assert queue.position("b0") == 2 and queue.position("a2") == 3
    assert run_all(queue, 1, ["a0"]) == ["a0", "b0", "a2"]
