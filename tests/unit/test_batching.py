"""MicroBatcher: concurrent requests share model calls, each gets its own rows back, a lone request never waits."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kubedistill.serve.batching import MicroBatcher


class Model:
    """Stands in for the model: rows times 10, optionally held until released; records each batch."""

    def __init__(self, hold: bool = False, fail_on: int | None = None):
        self.calls: list[np.ndarray] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.copy())
        self.started.set()
        assert self.release.wait(10)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise ValueError("model failed")
        return x * 10


def rows(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


async def in_the_model(b: MicroBatcher, model: Model, x: np.ndarray) -> asyncio.Task:
    """Submit `x` and return once its call has reached the (held) model: later requests queue behind it."""
    task = asyncio.create_task(b.submit(x))
    while not model.started.is_set():
        await asyncio.sleep(0.001)
    return task


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as p:
        yield p


def test_requests_waiting_for_the_model_share_the_next_call(pool):
    model = Model(hold=True)

    waits = []

    async def main():
        b = MicroBatcher(model, max_batch_size=8, max_latency_s=0.05, executor=pool, on_wait=waits.append)
        first = await in_the_model(b, model, rows(1))  # the lone first request runs at once
        rest = [
            asyncio.create_task(b.submit(rows(*range(10 * i, 10 * i + n)))) for i, n in ((2, 1), (3, 2), (4, 1), (5, 3))
        ]
        await asyncio.sleep(0.05)
        model.release.set()
        out = await asyncio.gather(first, *rest)
        await b.close()
        return out

    out = run(main())
    assert [len(c) for c in model.calls] == [1, 7]  # the four queued requests (7 images) in one call
    assert (
        len(waits) == 5 and waits[0] < min(waits[1:]) and min(waits[1:]) >= 0.04
    )  # the four waited for the first call
    assert out[0].ravel().tolist() == [10]
    assert [o.ravel().tolist() for o in out[1:]] == [[200], [300, 310], [400], [500, 510, 520]]


def test_batches_never_exceed_max_batch_size_but_a_big_request_runs_whole(pool):
    model = Model(hold=True)

    async def main():
        b = MicroBatcher(model, max_batch_size=4, max_latency_s=0.0, executor=pool)
        first = await in_the_model(b, model, rows(0))
        sizes = [3, 2, 6, 1, 1]
        tasks = [asyncio.create_task(b.submit(rows(*([i] * n)))) for i, n in enumerate(sizes, 1)]
        await asyncio.sleep(0.02)
        model.release.set()
        out = await asyncio.gather(first, *tasks)
        await b.close()
        return sizes, out

    sizes, out = run(main())
    assert [len(c) for c in model.calls] == [1, 3, 2, 6, 2]  # in order; 3+2 > 4 splits; the 6 runs alone
    assert [len(o) for o in out[1:]] == sizes and all((o == 10 * i).all() for i, o in enumerate(out[1:], 1))


def test_a_lone_request_does_not_wait_for_the_latency_budget(pool):
    async def main():
        b = MicroBatcher(Model(), max_batch_size=8, max_latency_s=30.0, executor=pool)
        t0 = time.monotonic()
        out = await b.submit(rows(1, 2))
        waited = time.monotonic() - t0
        await b.close()
        return out, waited

    out, waited = run(main())
    assert out.ravel().tolist() == [10, 20] and waited < 10  # nothing else was coming: no 30 s wait


def test_a_batch_waits_for_requests_still_decoding_and_stops_waiting_when_one_fails(pool):
    model = Model()

    async def main():
        b = MicroBatcher(model, max_batch_size=8, max_latency_s=30.0, executor=pool)

        async def request(x, decode_s, fails=False):
            with b.coming():
                await asyncio.sleep(decode_s)
                if fails:
                    raise ValueError("bad image")
            return await b.submit(x)

        a = asyncio.create_task(request(rows(1), 0.0))
        c = asyncio.create_task(request(rows(2), 0.2))  # still decoding when a is queued: a waits for it
        out = await asyncio.gather(a, c)
        assert [len(x) for x in model.calls] == [2]
        t0 = time.monotonic()
        d = asyncio.create_task(request(rows(3), 0.0))
        e = asyncio.create_task(request(rows(4), 0.2, fails=True))  # d waits for e, which never comes
        got = await asyncio.gather(d, e, return_exceptions=True)
        waited = time.monotonic() - t0
        await b.close()
        return out, got, waited

    out, got, waited = run(main())
    assert [o.ravel().tolist() for o in out] == [[10], [20]]
    assert got[0].ravel().tolist() == [30] and isinstance(got[1], ValueError)
    assert [len(x) for x in model.calls] == [2, 1] and waited < 10  # not the 30 s budget


def test_model_errors_reach_every_request_of_the_batch_and_the_batcher_goes_on(pool):
    model = Model(hold=True, fail_on=2)

    async def main():
        b = MicroBatcher(model, max_batch_size=8, max_latency_s=0.0, executor=pool)
        first = await in_the_model(b, model, rows(1))
        failing = [asyncio.create_task(b.submit(rows(i))) for i in (2, 3)]
        await asyncio.sleep(0.02)
        model.release.set()
        got = await asyncio.gather(first, *failing, return_exceptions=True)
        after = await b.submit(rows(4))
        await b.close()
        return got, after

    got, after = run(main())
    assert got[0].ravel().tolist() == [10]
    assert all(isinstance(g, ValueError) and str(g) == "model failed" for g in got[1:])
    assert after.ravel().tolist() == [40]


def test_cancelled_requests_are_dropped_and_close_fails_the_rest(pool):
    model = Model(hold=True)

    async def main():
        b = MicroBatcher(model, max_batch_size=8, max_latency_s=0.0, executor=pool)
        first = await in_the_model(b, model, rows(1))
        gone = asyncio.create_task(b.submit(rows(2)))
        kept = asyncio.create_task(b.submit(rows(3)))
        await asyncio.sleep(0.01)
        gone.cancel()  # its client went away while it was queued
        await asyncio.sleep(0.01)
        model.release.set()
        await asyncio.gather(first, kept)
        model.release.clear()
        late = asyncio.create_task(b.submit(rows(5)))
        while len(model.calls) < 3:
            await asyncio.sleep(0.001)
        queued = asyncio.create_task(b.submit(rows(6)))
        await asyncio.sleep(0.01)
        await b.close()  # shutting down: the queued request gets an error, not a hang
        model.release.set()
        return b, kept.result(), await asyncio.gather(late, queued, return_exceptions=True)

    b, kept, (late, queued) = run(main())
    assert [c.ravel().tolist() for c in model.calls[:2]] == [[1], [3]]  # the cancelled request never ran
    assert kept.ravel().tolist() == [30]
    assert isinstance(queued, RuntimeError) and "shutting down" in str(queued)
    assert isinstance(late, RuntimeError)  # its batch was in the model when the server stopped

    async def again():  # the app started again (a new event loop): the batcher serves afresh
        out = await b.submit(rows(8))
        await b.close()
        return out

    assert run(again()).ravel().tolist() == [80]


@pytest.mark.parametrize("size,latency", [(0, 0.005), (4, -1.0)])
def test_bad_settings_are_refused(pool, size, latency):
    with pytest.raises(ValueError):
        MicroBatcher(Model(), size, latency, pool)


def test_inputs_that_cannot_be_joined_fail_their_batch_not_the_batcher(pool):
    model = Model(hold=True)

    async def main():
        b = MicroBatcher(model, max_batch_size=8, max_latency_s=0.0, executor=pool)
        first = await in_the_model(b, model, rows(1))
        odd = [asyncio.create_task(b.submit(x)) for x in (rows(2), np.zeros((1, 3), np.float32))]  # 1 column vs 3
        await asyncio.sleep(0.02)
        model.release.set()
        got = await asyncio.gather(first, *odd, return_exceptions=True)
        after = await b.submit(rows(4))
        await b.close()
        return got, after

    got, after = run(main())
    assert got[0].ravel().tolist() == [10] and all(isinstance(g, ValueError) for g in got[1:])
    assert after.ravel().tolist() == [40]
