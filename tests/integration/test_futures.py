"""AsyncResults as concurrent.futures Futures and awaitables, the view Executor and imap,
against real servers and engines."""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures

import pytest

from enginefarm import RemoteError
from enginefarm.errors import TimeoutError

from ..harness import wait_for
from . import farm_tasks as ft
from .gatefiles import gates  # noqa: F401  (a fixture)

TIMEOUT_S = 60


@pytest.fixture
def one_engine_lview(cluster, client):
    cluster.start_scheduler()
    cluster.start_engine()
    client.wait_for_engines(1, timeout=TIMEOUT_S)
    return client.load_balanced_view()


@pytest.fixture
def lview(cluster, client):
    cluster.start_scheduler()
    cluster.start_engines(2)
    client.wait_for_engines(2, timeout=TIMEOUT_S)
    wait_for(lambda: ft.work_queue_consumers(cluster.settings) == 2, TIMEOUT_S, "both engines consuming")
    return client.load_balanced_view()


def status_of(client, task_id):
    return client.records.statuses([task_id])[0]


# --- the Future interface ---------------------------------------------------------------------
def test_results_and_thread_pool_futures_complete_together_in_as_completed(lview, gates):
    gate = gates.new()
    release_local = threading.Event()
    with futures.ThreadPoolExecutor(1) as pool:
        local = pool.submit(release_local.wait, TIMEOUT_S)
        remote = lview.apply_async(ft.gate, gate)
        quick = lview.apply_async(ft.square, 7)
        order = []
        for done in futures.as_completed([local, remote, quick], timeout=TIMEOUT_S):
            order.append(done)
            # Each completion releases the next: the remote gate, then the local thread.
            if done is quick:
                gates.open(gate)
            elif done is remote:
                release_local.set()
    assert order == [quick, remote, local]
    assert [quick.result(), remote.result(), local.result()] == [49, "released", True]


def test_a_done_callback_fires_when_the_outcome_arrives_without_a_wait(lview, gates):
    gate = gates.new()
    fired = threading.Event()
    seen = []
    ar = lview.apply_async(ft.gate, gate)
    ar.add_done_callback(lambda f: (seen.append(f.result()), fired.set()))
    assert not ar.done() and not fired.is_set()
    gates.open(gate)
    # Nobody calls get or wait: the client's result thread settles the future.
    assert fired.wait(TIMEOUT_S)
    assert seen == ["released"] and ar.done()
    # A callback added to a finished future runs at once, in the caller's thread.
    late = []
    ar.add_done_callback(lambda f: late.append(threading.current_thread()))
    assert late == [threading.current_thread()]


def test_exception_and_result_follow_the_futures_contract(lview, gates):
    failing = lview.apply_async(ft.fail_now, "no luck")
    assert isinstance(failing.exception(TIMEOUT_S), RemoteError)
    assert failing.exception().evalue == "no luck"
    with pytest.raises(RemoteError):
        failing.result()
    fine = lview.apply_async(ft.square, 3)
    assert fine.exception(TIMEOUT_S) is None and fine.result() == 9
    gate = gates.new()
    blocked = lview.apply_async(ft.gate, gate)
    # enginefarm's TimeoutError is the one futures code catches.
    with pytest.raises(futures.TimeoutError):
        blocked.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        blocked.exception(timeout=0.2)


def test_running_is_true_while_an_engine_runs_the_task(lview, gates):
    gate = gates.new()
    ar = lview.apply_async(ft.gate, gate)
    wait_for(ar.running, TIMEOUT_S, "the task to run")
    gates.open(gate)
    assert ar.result(TIMEOUT_S) == "released"
    assert not ar.running()


def test_cancel_aborts_a_task_that_has_not_started_and_only_that(one_engine_lview, client, gates):
    lview = one_engine_lview
    gate = gates.new()
    busy = lview.apply_async(ft.gate, gate)
    wait_for(busy.running, TIMEOUT_S, "the engine to be busy")
    waiting = lview.apply_async(ft.square, 5)
    done, _ = futures.wait([waiting], timeout=0)  # a cancel must wake waiters too
    waiter = threading.Thread(target=futures.wait, args=([waiting],), kwargs={"timeout": TIMEOUT_S})
    waiter.start()
    assert waiting.cancel() is True
    waiter.join(TIMEOUT_S)
    assert not waiter.is_alive()
    assert waiting.cancelled() and waiting.done()
    with pytest.raises(futures.CancelledError):
        waiting.result()
    assert busy.cancel() is False  # running: it goes on
    gates.open(gate)
    assert busy.result(TIMEOUT_S) == "released"
    wait_for(lambda: status_of(client, waiting.msg_id) == "aborted", TIMEOUT_S, "the cancelled task's record")
    assert waiting.cancelled()  # its aborted outcome arriving later does not undo the cancel


def test_wait_with_return_when_on_results_and_on_the_client(lview, client, gates):
    gate = gates.new()
    blocked = lview.apply_async(ft.gate, gate)
    quick = lview.apply_async(ft.square, 2)
    both = type(quick).join(blocked, quick)
    done, pending = both.wait(TIMEOUT_S, return_when=futures.FIRST_COMPLETED)
    assert [d.msg_id for d in done] == [quick.msg_id] and [p.msg_id for p in pending] == [blocked.msg_id]
    assert client.wait([blocked.msg_id, quick.msg_id], TIMEOUT_S, return_when=futures.FIRST_COMPLETED) is True
    assert client.wait([blocked.msg_id, quick.msg_id], 0.2, return_when=futures.ALL_COMPLETED) is False
    failing = lview.apply_async(ft.fail_now)
    assert client.wait([blocked.msg_id, failing.msg_id], TIMEOUT_S, return_when=futures.FIRST_EXCEPTION) is True
    done, pending = type(quick).join(blocked, failing).wait(TIMEOUT_S, return_when=futures.FIRST_EXCEPTION)
    assert {d.msg_id for d in done} == {failing.msg_id}
    gates.open(gate)
    assert both.wait(TIMEOUT_S) is True and both.get() == ["released", 4]


def test_split_and_join_are_inverse(lview):
    ar = lview.map_async(ft.square, range(6), chunksize=2)
    parts = ar.split()
    assert len(parts) == 3
    assert [p.get(TIMEOUT_S) for p in parts] == [[0, 1], [4, 9], [16, 25]]
    joined = type(ar).join(*parts)
    assert joined.get() == ar.get() == [0, 1, 4, 9, 16, 25]
    assert len(joined) == 6


def test_a_callback_that_waits_for_a_result_gets_a_clear_error(lview, gates):
    gate = gates.new()
    other = lview.apply_async(ft.gate, gate)
    errors = []
    fired = threading.Event()

    def wait_inside(_f):
        try:
            other.get()
        except RuntimeError as exc:
            errors.append(str(exc))
        fired.set()

    lview.apply_async(ft.square, 1).add_done_callback(wait_inside)
    assert fired.wait(TIMEOUT_S)
    assert errors and "result thread" in errors[0]
    gates.open(gate)
    assert other.get(TIMEOUT_S) == "released"


# --- asyncio ----------------------------------------------------------------------------------
def test_await_a_thousand_results_from_one_event_loop(lview):
    results = [lview.apply_async(ft.square, i) for i in range(1000)]
    threads_before = threading.active_count()
    seen_threads = []

    async def main():
        async def watch():
            while True:
                seen_threads.append(threading.active_count())
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        values = await asyncio.wait_for(asyncio.gather(*results), TIMEOUT_S)
        watcher.cancel()
        return values

    assert asyncio.run(main()) == [i * i for i in range(1000)]
    # No thread per result: the one result thread tells the loop.
    assert seen_threads and max(seen_threads) <= threads_before + 1


def test_awaiting_a_result_leaves_the_event_loop_free(lview, gates):
    gate = gates.new()
    ar = lview.apply_async(ft.gate, gate)

    async def main():
        async def open_later():
            # Runs only if awaiting the result gave the loop back.
            await asyncio.sleep(0)
            gates.open(gate)

        opener = asyncio.ensure_future(open_later())
        value = await asyncio.wait_for(ar, TIMEOUT_S)
        await opener
        return value

    assert asyncio.run(main()) == "released"


def test_a_failed_task_raises_its_remote_error_in_the_awaiting_coroutine(lview):
    async def main():
        return await lview.apply_async(ft.fail_now, "async no luck")

    with pytest.raises(RemoteError) as info:
        asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert info.value.evalue == "async no luck"


# --- the Executor -----------------------------------------------------------------------------
def test_a_view_executor_submits_maps_and_shuts_down(lview):
    with lview.executor() as ex:
        assert isinstance(ex, futures.Executor)
        f = ex.submit(ft.square, 12)
        assert f.result(TIMEOUT_S) == 144
        assert list(ex.map(ft.square, range(10), timeout=TIMEOUT_S)) == [i * i for i in range(10)]
        assert list(ex.map(pow, [2, 3], [5, 2], chunksize=1)) == [32, 9]
        fs = [ex.submit(ft.square, i) for i in range(20)]
    # Leaving the block waited for everything given
    assert all(f.done() for f in fs) and [f.result() for f in fs] == [i * i for i in range(20)]
    with pytest.raises(RuntimeError):
        ex.submit(ft.square, 1)
    with pytest.raises(RuntimeError):
        ex.map(ft.square, [1])


def test_executor_map_times_out_and_cancel_futures_aborts_the_rest(one_engine_lview, client, gates):
    ex = one_engine_lview.executor()
    gate = gates.new()
    results = ex.map(ft.gate, [gate], timeout=0.3)
    with pytest.raises(futures.TimeoutError):
        next(results)
    behind = [ex.submit(ft.square, i) for i in range(3)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in behind)
    gates.open(gate)
    ex.shutdown(wait=True)
    for f in behind:
        wait_for(lambda f=f: status_of(client, f.msg_id) == "aborted", TIMEOUT_S, "the cancelled records")


def test_a_direct_view_executor_runs_on_every_engine(cluster, client):
    cluster.start_engines(2)
    client.wait_for_engines(2, timeout=TIMEOUT_S)
    with client[:].executor() as ex:
        assert ex.submit(ft.square, 4).result(TIMEOUT_S) == [16, 16]
        assert list(ex.map(ft.square, range(8))) == [i * i for i in range(8)]


# --- imap -------------------------------------------------------------------------------------
def test_imap_reads_a_generator_lazily_with_a_bounded_number_in_flight(lview, client):
    read = [0]

    def items(n):
        for i in range(n):
            read[0] += 1
            yield i

    limit, chunk = 100, 100
    most_read_ahead = most_held = 0
    total = 0
    for count, value in enumerate(lview.imap(ft.square, items(100_000), max_outstanding=limit, chunksize=chunk), 1):
        assert value == (count - 1) ** 2
        total += 1
        most_read_ahead = max(most_read_ahead, read[0] - count)
        most_held = max(most_held, len(client.results))
    assert total == 100_000
    # Read ahead of the consumer: never more than the chunk being yielded and
    # max_outstanding tasks of chunksize items in flight; the client forgot each result
    # once yielded.
    assert most_read_ahead <= (limit + 1) * chunk
    assert most_held <= limit
    assert client.results == {} and client.outstanding == set()


def test_imap_unordered_yields_as_results_come(lview, gates):
    gate = gates.new()
    it = lview.imap(ft.gate_or_echo, [gate, "quick"], ordered=False, max_outstanding=2)
    # The quick item comes first although it is second in the input.
    assert next(it) == "quick"
    gates.open(gate)
    assert next(it) == "released"
    with pytest.raises(StopIteration):
        next(it)


def test_imap_raises_a_failed_items_error_in_place(lview):
    def inverse(x):
        return 1 / x

    it = lview.imap(inverse, [1, 2, 0, 4], max_outstanding=4)
    assert [next(it), next(it)] == [1.0, 0.5]
    with pytest.raises(RemoteError) as info:
        next(it)
    assert info.value.ename == "ZeroDivisionError"


def test_closing_imap_early_aborts_what_has_not_started(one_engine_lview, client, gates):
    lview = one_engine_lview
    gate = gates.new()
    read = []

    def items():
        yield gate  # blocks the one engine
        for i in range(1, 10):
            read.append(i)
            yield i

    it = lview.imap(ft.gate_or_echo, items(), max_outstanding=5)
    first = []
    consumer = threading.Thread(target=lambda: first.append(next(it)))
    consumer.start()
    wait_for(lambda: len(client.outstanding) == 5, TIMEOUT_S, "five tasks in flight")
    wait_for(lambda: status_of(client, client.history[0]) == "running", TIMEOUT_S, "the gated task to run")
    behind = client.history[1:]
    gates.open(gate)
    consumer.join(TIMEOUT_S)
    assert first == ["released"]
    it.close()
    # What was still in flight was aborted, or had finished already; nothing more was read.
    statuses = client.records.statuses(behind)
    assert set(statuses) <= {"aborted", "completed", "running"}
    assert len(read) <= 5 + 1
    wait_for(lambda: not client.outstanding, TIMEOUT_S, "every in-flight task to end")


def test_imap_refuses_bad_arguments(lview):
    with pytest.raises(TypeError):
        lview.imap(ft.square)
    with pytest.raises(ValueError):
        lview.imap(ft.square, [1], max_outstanding=0)
    with pytest.raises(ValueError):
        lview.imap(ft.square, [1], chunksize=0)


def test_a_future_on_another_clients_task_settles_when_it_ends(lview, settings, gates):
    from enginefarm import Client

    gate = gates.new()
    task_id = lview.apply_async(ft.gate, gate).msg_id
    with Client(settings=settings) as other:
        ar = other.get_result(task_id, block=False)
        fired = threading.Event()
        ar.add_done_callback(lambda _f: fired.set())
        assert not ar.done()
        gates.open(gate)
        # Its outcome goes to the first client's inbox: this one reads the status.
        assert fired.wait(TIMEOUT_S)
        assert ar.result() == "released"


def test_a_malformed_inbox_entry_does_not_take_the_others_with_it(lview, settings):
    from enginefarm import Client

    task_id = lview.apply_async(ft.square, 6).msg_id
    wait_for(lambda: status_of(lview.client, task_id) == "completed", TIMEOUT_S, "the task to complete")
    with Client(settings=settings) as other:
        inbox = other.names.client_inbox(other.client_id)
        # Popped together (oldest first): a torn packed record, then a plain task id.
        other.records.redis.lpush(inbox, b"\0garbage", task_id.encode())
        other.spin()
        assert other.results == {task_id: 36}
