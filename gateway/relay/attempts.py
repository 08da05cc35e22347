"""Opening a request on a worker: pick, send, wait for the headers, retry before the first byte.

Blame is decided here from `UpstreamError.outcome` (errors.py): only a worker's own faults reach its breaker. The
wait for the headers is a fair-time deadline (overload.py) that starts when the request is handed to the client
library, so time this process loses on its own loop is never a worker's timeout.
"""

from __future__ import annotations

import time

from sparsegate.gateway.context import Attempt, Job, RequestContext
from sparsegate.gateway.errors import GatewayError, UpstreamError, UpstreamRejected, UpstreamTimeout
from sparsegate.gateway.overload import FairDeadline
from sparsegate.gateway.relay.mend import sample_rids
from sparsegate.gateway.routing import Outcome
from sparsegate.gateway.state import GatewayState, Snapshot
from sparsegate.gateway.upstream import status_error

# UpstreamError.outcome → what the router tells the worker's breaker and the pool's policy.
ROUTER_OUTCOME: dict[str, Outcome] = {
    "refused": "connect_error",
    "reset": "upstream_error",
    "server_error": "upstream_error",
    "bad_response": "upstream_error",
    "timeout": "timeout",
    "busy": "busy",
}


def router_outcome(exc: UpstreamError) -> Outcome:
    if exc.outcome == "rejected":
        return "client_error"  # the worker refused the request itself: it is up, and not at fault
    return ROUTER_OUTCOME.get(exc.outcome, "upstream_error") if exc.blames_worker else "busy"


async def open_with_retries(state: GatewayState, snapshot: Snapshot, ctx: RequestContext, job: Job) -> Attempt:
    record = ctx.record
    router, observer = state.router, state.observer
    tried: list[str] = []
    last: GatewayError | None = None
    wait_s = snapshot.timeouts.first_byte_s if job.stream else snapshot.timeouts.total_s
    # A stored response lives on one worker only: there is nowhere else to retry.
    attempts = 1 if job.pinned_worker is not None else snapshot.retries.max_attempts
    for n in range(attempts):
        try:
            if job.pinned_worker is not None:
                worker = router.pick_pinned(job.plan.pool.name, job.pinned_worker)
            else:
                worker = router.pick_worker(job.plan.pool.name, job.affinity_key, exclude=tried)
        except GatewayError:
            if last is not None:
                raise last from None
            raise
        # Every attempt gets its own rid on the worker, derived from the first, so an abort always names the
        # attempt that is actually running.
        rid = job.rid if n == 0 else f"{job.rid}-r{n}"
        record.worker, record.rid, record.attempts = worker.url, rid, n + 1
        headers = dict(job.upstream_headers)
        record.trace.upstream_start(worker.url, rid, headers)
        ctx.attempt = Attempt(worker, rid, None)  # from here a cancel (client gone) aborts it on the worker
        started = time.perf_counter()
        try:
            async with FairDeadline(state.monitor, wait_s):
                response = await state.upstream.post(
                    worker.url, job.path, job.body_for(rid), headers, method=job.method
                )
                if response.status >= 400:
                    try:
                        body = await response.read()
                    finally:
                        await response.aclose()
                    raise status_error(worker.url, response.status, body, response.header("retry-after"))
        except TimeoutError:
            failure: UpstreamError | UpstreamRejected = UpstreamTimeout(f"Worker {worker.url} did not answer in time.")
        except (UpstreamError, UpstreamRejected) as exc:
            failure = exc
        else:
            record.upstream_s += time.perf_counter() - started
            observer.on_upstream_attempt(record, worker.url, None)
            ctx.attempt.response = response
            if job.on_opened is not None:
                await job.on_opened(ctx.attempt)
            return ctx.attempt
        # the attempt failed before the first byte
        record.upstream_s += time.perf_counter() - started
        record.trace.upstream_end(type(failure).__name__)
        observer.on_upstream_attempt(record, worker.url, type(failure).__name__)
        ctx.attempt = None
        if isinstance(failure, UpstreamRejected):
            router.release(worker, "client_error")  # a 4xx answer still shows the worker is up
            raise failure
        router.release(worker, router_outcome(failure))
        if isinstance(failure, UpstreamTimeout):
            for sample in sample_rids(rid, job.n, job.expands_rid):  # it may still be working on it
                state.spawn(state.upstream.abort(worker.url, sample))
        if failure.retriable and n + 1 < attempts:
            tried.append(worker.url)
            last = failure
            continue
        raise failure
    assert last is not None
    raise last
