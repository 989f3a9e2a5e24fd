"""Shared results and the heavy lane's workers, in-process: single flight, work that stops
when nobody waits, the byte bound, and the place in line."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cnndemo import cancel
from cnndemo.attribution import Settings, attribute_shared, attribution_model
from cnndemo.lanes import Lane
from cnndemo.pipeline import prepare
from cnndemo.runtime import STORE
from cnndemo.shared import SharedResults, nbytes


def wait_until(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Slow:
    """A computation that runs until released (or cancelled), counting its starts."""

    def __init__(self):
        self.started = 0
        self.release = threading.Event()
        self.stopped = threading.Event()

    def __call__(self, progress):
        self.started += 1
        try:
            while not self.release.is_set():
                cancel.check()
                if progress:
                    progress(0.5, "working")
                time.sleep(0.01)
        except cancel.Cancelled:
            self.stopped.set()
            raise
        return np.ones(1000, dtype=np.float32)


def request(results: SharedResults, key, compute, token: threading.Event, out: dict, name: str):
    """One request in a thread of its own, with its own cancellation token."""

    def run():
        try:
            with cancel.cancellable(token):
                out[name] = results.get(key, compute)
        except cancel.Cancelled:
            out[name] = "cancelled"

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_identical_requests_compute_once_and_all_get_the_result():
    results, work = SharedResults(10 << 20), Slow()
    out: dict = {}
    threads = [request(results, "k", work, threading.Event(), out, f"r{i}") for i in range(10)]
    wait_until(lambda: results.counts["joined"] == 9, what="nine requests to join the first")
    work.release.set()
    for t in threads:
        t.join(10)
    assert work.started == 1
    assert all(isinstance(out[f"r{i}"], np.ndarray) for i in range(10))
    assert results.get("k", lambda p: pytest.fail("recomputed a cached result")) is out["r0"]
    assert results.counts["computed"] == 1


def test_the_work_goes_on_while_anyone_waits_and_stops_when_nobody_does():
    results, work = SharedResults(10 << 20), Slow()
    out: dict = {}
    first, second = threading.Event(), threading.Event()
    t1 = request(results, "k", work, first, out, "first")
    wait_until(lambda: work.started == 1)
    t2 = request(results, "k", work, second, out, "second")
    wait_until(lambda: results.counts["joined"] == 1)
    first.set()  # the request that started it goes away: the other still waits
    time.sleep(0.3)
    assert not work.stopped.is_set()
    second.set()  # now nobody waits
    wait_until(work.stopped.is_set, timeout=2, what="the abandoned work to stop")
    t1.join(5)
    t2.join(5)
    assert out == {"first": "cancelled", "second": "cancelled"}
    assert len(results.cache) == 0


def test_errors_are_not_kept_and_reach_every_waiter():
    results = SharedResults(10 << 20)
    calls = []

    def failing(_p):
        calls.append(1)
        time.sleep(0.2)
        raise ValueError("bad input")

    errors = []

    def run():
        try:
            results.get("k", failing)
        except ValueError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert errors == ["bad input"] * 3 and len(calls) == 1
    with pytest.raises(ValueError):
        results.get("k", failing)
    assert len(calls) == 2


def test_the_cache_is_bounded_in_bytes():
    results = SharedResults(3 * 4000)
    for i in range(5):
        results.get(i, lambda _p: np.zeros(1000, dtype=np.float32))
    assert results.cache.bytes <= 3 * 4000 and len(results.cache) == 3
    assert results.peek(0) is None and results.peek(4) is not None
    assert nbytes({"a": [np.zeros(10, np.float64)], "b": b"xyz"}) == 83


def test_a_lane_runs_its_slots_and_tells_the_others_their_place():
    lane = Lane("test", 1)
    order, told = [], []
    hold = threading.Event()

    def job(name):
        with lane.slot(lambda _f, desc: told.append((name, desc))):
            order.append(name)
            if name == "a":
                hold.wait(5)

    a = threading.Thread(target=job, args=("a",))
    a.start()
    wait_until(lambda: order == ["a"])
    b = threading.Thread(target=job, args=("b",))
    b.start()
    wait_until(lambda: lane.status() == (1, 1))
    c = threading.Thread(target=job, args=("c",))
    c.start()
    wait_until(lambda: lane.status() == (1, 2))
    wait_until(lambda: ("c", "Waiting for a free worker: 2 long jobs ahead") in told)
    hold.set()
    for t in (a, b, c):
        t.join(5)
    assert order == ["a", "b", "c"]
    assert ("b", "Waiting for a free worker: 1 long job ahead") in told


def test_a_cancelled_request_leaves_the_line_and_a_slot_is_reentrant():
    lane = Lane("test", 1)
    hold, token = threading.Event(), threading.Event()
    out = []

    def holder():
        with lane.slot():
            with lane.slot():  # the grid asks for each method's slot inside its own
                hold.wait(5)

    def waiter():
        try:
            with cancel.cancellable(token), lane.slot():
                out.append("ran")
        except cancel.Cancelled:
            out.append("cancelled")

    h = threading.Thread(target=holder)
    h.start()
    wait_until(lambda: lane.status() == (1, 0))
    w = threading.Thread(target=waiter)
    w.start()
    wait_until(lambda: lane.status() == (1, 1))
    token.set()
    w.join(5)
    assert out == ["cancelled"] and lane.status() == (1, 0)
    hold.set()
    h.join(5)
    assert lane.status() == (0, 0)


def test_ten_identical_integrated_gradients_run_the_network_once(cat):
    """Ten concurrent requests for the same map count the forward passes of one."""
    from cnndemo.shared import RESULTS

    RESULTS.clear()
    lm = STORE.get("mnist_inception")
    passes = []
    handle = attribution_model(lm).register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        inp = prepare(cat, lm)
        solo = attribute_shared(cat.parent / "coffee.jpg", lm, "ig", settings=Settings(steps=16))
        one = len(passes)
        passes.clear()
        out = []
        barrier = threading.Barrier(10)

        def student():
            barrier.wait(10)
            out.append(attribute_shared(inp, lm, "ig", settings=Settings(steps=16)))

        threads = [threading.Thread(target=student) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        handle.remove()
    assert one > 1 and len(out) == 10
    assert len(passes) == one, f"{len(passes)} forward passes for 10 identical requests; one request makes {one}"
    assert all(a is out[0] for a in out) and solo is not out[0]


def test_concurrent_predictions_share_one_batched_pass(setenv, examples):
    """With batching on, images that queue while the model is busy go through one forward
    pass together, and each request gets exactly what it would have got alone."""
    from cnndemo import branches

    lm = STORE.get("mnist_resnet")
    photos = sorted(p for p in examples.iterdir() if p.suffix == ".jpg")[:4]
    xs = [prepare(p, lm).x for p in photos]
    alone = [branches.explore_tensor(lm, x) for x in xs]
    setenv("CNNDEMO_BATCH", "on")
    out: dict = {}
    with lm.lock:  # the model is busy: every request queues
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, branches.explore_tensor(lm, xs[i])))
                   for i in range(len(xs))]
        for t in threads:
            t.start()
        wait_until(lambda: sum(len(q) for q in branches.BATCHER._pending.values()) == len(xs), what="all to queue")
    for t in threads:
        t.join(30)
    for i, (pred, blocks, _ms) in enumerate(alone):
        got = out[i][0]
        assert got.batch == len(xs) and pred.batch == 1
        assert [t.index for t in got.top] == [t.index for t in pred.top]
        assert np.allclose([t.prob for t in got.top], [t.prob for t in pred.top], atol=1e-5)
        name = next(iter(blocks))
        assert np.allclose(out[i][1][name].branches[0].mean_map, blocks[name].branches[0].mean_map, atol=1e-4)


def test_a_failed_batch_gives_each_request_its_own_answer(setenv, monkeypatch, examples):
    from cnndemo import branches

    lm = STORE.get("mnist_resnet")
    setenv("CNNDEMO_BATCH", "on")
    real = branches._explore_batch

    def only_alone(lm_, xs, top):
        if len(xs) > 1:
            raise RuntimeError("out of memory")
        return real(lm_, xs, top)

    monkeypatch.setattr(branches, "_explore_batch", only_alone)
    xs = [prepare(p, lm).x for p in sorted(examples.glob("*.jpg"))[:3]]
    out: dict = {}
    with lm.lock:
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, branches.explore_tensor(lm, xs[i])))
                   for i in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(len(q) for q in branches.BATCHER._pending.values()) == 3, what="all to queue")
    for t in threads:
        t.join(30)
    assert sorted(out) == [0, 1, 2] and all(r[0].batch == 1 for r in out.values())


def test_work_that_holds_the_only_worker_never_waits_for_a_request_waiting_for_it():
    """The all-methods grid holds the heavy worker and asks for IG; a student's identical IG
    arrived first and waits for that worker. Joining it would wait forever: the grid computes
    it, and the student then finds it done."""
    lane, results = Lane("test", 1), SharedResults(10 << 20)
    computed: list[str] = []
    student_waits, out = threading.Event(), {}

    def ig(who):
        def compute(_p):
            computed.append(who)
            return np.ones(10, np.float32)
        return compute

    def grid():
        def all_methods():
            wait_until(lambda: lane.status() == (1, 1), what="the student to wait for the worker")
            student_waits.set()
            return results.get("ig", ig("grid"), lane=lane)
        out["grid"] = lane.run(all_methods)

    g = threading.Thread(target=grid, daemon=True)
    g.start()
    wait_until(lambda: lane.status()[0] == 1)
    s = threading.Thread(target=lambda: out.__setitem__("student", results.get("ig", ig("student"), lane=lane)),
                         daemon=True)
    s.start()
    g.join(10)
    s.join(10)
    assert not g.is_alive() and not s.is_alive(), "deadlocked"
    assert computed == ["grid"] and out["student"] is out["grid"]


def test_a_server_shutting_down_stops_every_requests_work(monkeypatch):
    """Ctrl-C: ``cancel.stop_all`` makes every request's next check raise (the process then
    exits in about 3 s instead of waiting 40 s for an Integrated Gradients run nobody will see);
    work outside a request (the command line) goes on."""
    monkeypatch.setattr(cancel, "_STOPPING", threading.Event())
    token = threading.Event()
    with cancel.cancellable(token):
        cancel.check()
        cancel.stop_all()
        with pytest.raises(cancel.Cancelled):
            cancel.check()
    cancel.check()  # no request: nothing to stop
