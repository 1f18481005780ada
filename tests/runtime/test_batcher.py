"""edgemp.runtime.Batcher: every caller gets exactly its own answer, limits and failures stay local."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from runtime_fixtures import F, build_sparse_model, random_graph, random_graphs

import edgemp.runtime as rt
from edgemp.errors import EdgempError, GraphValidationError, QueueFullError, RequestTimeoutError, ShuttingDownError
from edgemp.graph import Graph
from edgemp.runtime import Batcher, BatcherConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> rt.Model:
    return rt.load(build_sparse_model(tmp_path_factory.mktemp("m") / "m.onnx"), providers="cpu")


def same(a: list[dict], b: list[dict], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(np.abs(x[k] - y[k]).max(initial=0) <= tol for x, y in zip(a, b) for k in x)


class SlowModel:
    """Wraps a model; run_batch sleeps (to fill the queue) or fails on a marked graph."""

    def __init__(self, model: rt.Model, delay_s: float = 0.0, poison_nodes: int | None = None):
        self.model, self.delay_s, self.poison_nodes = model, delay_s, poison_nodes
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def validate(self, graphs):
        return self.model.validate(graphs)

    def split(self, outputs, batch):
        return self.model.split(outputs, batch)

    def run_batch(self, batch):
        self.gate.wait()
        time.sleep(self.delay_s)
        self.batch_sizes.append(batch.num_graphs)
        if self.poison_nodes is not None and self.poison_nodes in batch.graph_node_counts.tolist():
            raise RuntimeError("backend blew up")
        return self.model.run_batch(batch)


def test_concurrent_submissions_get_their_own_answers(model):
    rng = np.random.default_rng(0)
    requests = [random_graphs(rng, int(rng.integers(1, 4))) for _ in range(1600)]
    expected = [model.predict(r) for r in requests]
    timings = []
    with Batcher(model, BatcherConfig(max_batch_graphs=32, max_queue_delay_us=200, max_queue_size=4096)) as b:
        def client(idx: list[int]) -> list[tuple[int, list]]:
            futures = [(i, b.submit(requests[i])) for i in idx]
            return [(i, f.result(timeout=30), f.timing) for i, f in futures]

        with ThreadPoolExecutor(8) as pool:
            chunks = [list(range(t, 1600, 8)) for t in range(8)]
            results = [r for chunk in pool.map(client, chunks) for r in chunk]
        stats = b.stats()
    assert len(results) == 1600
    for i, got, timing in results:
        assert same(got, expected[i]), f"request {i} got someone else's answer"
        timings.append(timing)
    assert all(t is not None and t.queue_ns >= 0 and t.compute_ns > 0 for t in timings)
    assert stats.succeeded == 1600 and stats.failed == stats.timed_out == 0
    assert stats.batches < 1600, "requests were never batched together"
    assert stats.batch_graphs_total == sum(len(r) for r in requests)
    assert stats.compute_count == stats.queue_count == 1600 and stats.queue_depth == 0
    assert max(stats.recent_batch_graphs) <= 32 + 2  # only an oversized head request may exceed


def test_bad_graph_rejected_at_submit_others_unaffected(model):
    rng = np.random.default_rng(1)
    good = [random_graphs(rng, 2) for _ in range(5)]
    bad = [random_graph(rng, 3, 2), Graph(x=np.zeros((2, F + 1), np.float32), edge_index=np.zeros((2, 0), np.int64))]
    with Batcher(model) as b:
        futures = [b.submit(g) for g in good[:3]]
        with pytest.raises(GraphValidationError, match="graph 1: x has 6 features"):
            b.submit(bad)
        futures += [b.submit(g) for g in good[3:]]
        assert all(same(f.result(5), model.predict(g)) for f, g in zip(futures, good))
        assert b.stats().invalid == 1


def test_queue_full_and_timeout(model):
    slow = SlowModel(model)
    slow.gate.clear()  # the worker blocks inside the first batch
    hook: list[str] = []
    cfg = BatcherConfig(max_batch_graphs=1, max_queue_delay_us=0, max_queue_size=3)
    b = Batcher(slow, cfg, on_complete=lambda outcome, timing: hook.append(outcome))
    g = [random_graph(np.random.default_rng(i), 3, 2) for i in range(6)]
    first = b.submit([g[0]])
    deadline = time.time() + 5
    while b.stats().queue_depth and time.time() < deadline:  # worker picked it up
        time.sleep(0.001)
    waiting = [b.submit([g[1]], timeout_us=1_000), b.submit([g[2]]), b.submit([g[3]])]
    with pytest.raises(QueueFullError, match="queue is full"):
        b.submit([g[4]])
    time.sleep(0.01)  # the 1 ms timeout expires while queued
    slow.gate.set()
    assert same(first.result(5), model.predict([g[0]]))
    with pytest.raises(RequestTimeoutError, match="not run"):
        waiting[0].result(5)
    assert same(waiting[1].result(5), model.predict([g[2]]))
    assert same(waiting[2].result(5), model.predict([g[3]]))
    b.close()
    s = b.stats()
    assert (s.succeeded, s.rejected, s.timed_out, s.failed) == (3, 1, 1, 0)
    assert sorted(hook) == ["rejected", "success", "success", "success", "timed_out"]
    assert sum(slow.batch_sizes) == 3, "the timed-out request must not run"


def test_failed_batch_isolates_the_culprit(model):
    slow = SlowModel(model, poison_nodes=7)
    slow.gate.clear()
    rng = np.random.default_rng(2)
    reqs = [[random_graph(rng, 3, 2)], [random_graph(rng, 7, 4)], [random_graph(rng, 4, 4), random_graph(rng, 2, 1)]]
    with Batcher(slow, BatcherConfig(max_queue_delay_us=50_000)) as b:
        futures = [b.submit(r) for r in reqs]
        slow.gate.set()
        assert same(futures[0].result(5), model.predict(reqs[0]))
        with pytest.raises(RuntimeError, match="backend blew up"):
            futures[1].result(5)
        assert same(futures[2].result(5), model.predict(reqs[2]))
    assert slow.batch_sizes[0] == 4  # tried together first
    assert b.stats().failed == 1 and b.stats().succeeded == 2


def test_budget_and_oversized_request(model):
    slow = SlowModel(model)
    slow.gate.clear()
    rng = np.random.default_rng(3)
    big = [random_graph(rng, 10, 5) for _ in range(5)]  # 50 nodes > budget: runs alone
    small = [[random_graph(rng, 10, 5)] for _ in range(4)]
    cfg = BatcherConfig(max_batch_nodes=20, max_queue_delay_us=100_000)
    with Batcher(slow, cfg) as b:
        futures = [b.submit(big)] + [b.submit(s) for s in small]
        slow.gate.set()
        assert same(futures[0].result(5), model.predict(big))
        for f, s in zip(futures[1:], small):
            assert same(f.result(5), model.predict(s))
    assert slow.batch_sizes == [5, 2, 2]


def test_queue_delay_batches_then_flushes(model):
    slow = SlowModel(model)
    rng = np.random.default_rng(4)
    with Batcher(slow, BatcherConfig(max_queue_delay_us=20_000)) as b:
        start = time.perf_counter()
        futures = [b.submit([random_graph(rng, 3, 2)]) for _ in range(5)]
        for f in futures:
            f.result(5)
        elapsed = time.perf_counter() - start
    assert slow.batch_sizes == [5]
    assert 0.015 < elapsed < 2.0


def test_close_drains_and_then_rejects(model):
    slow = SlowModel(model, delay_s=0.005)
    rng = np.random.default_rng(5)
    reqs = [[random_graph(rng, 3, 2)] for _ in range(10)]
    b = Batcher(slow, BatcherConfig(max_batch_graphs=2, max_queue_delay_us=0))
    futures = [b.submit(r) for r in reqs]
    b.close(drain=True)
    assert all(f.done() for f in futures)
    assert all(same(f.result(), model.predict(r)) for f, r in zip(futures, reqs))
    with pytest.raises(ShuttingDownError):
        b.submit(reqs[0])
    assert b.stats().rejected == 1


def test_close_without_drain_fails_queued(model):
    slow = SlowModel(model)
    slow.gate.clear()
    rng = np.random.default_rng(6)
    b = Batcher(slow, BatcherConfig(max_batch_graphs=1, max_queue_delay_us=0))
    futures = [b.submit([random_graph(rng, 3, 2)]) for _ in range(4)]
    time.sleep(0.02)
    threading.Timer(0.05, slow.gate.set).start()
    b.close(drain=False)
    assert futures[0].result(5)  # already running: finishes
    for f in futures[1:]:
        with pytest.raises(ShuttingDownError):
            f.result(5)


def test_config_validation_and_empty_submit(model):
    with pytest.raises(EdgempError, match="max_batch_graphs must be >= 1"):
        BatcherConfig(max_batch_graphs=0)
    with Batcher(model) as b:
        assert b.submit([]).result(1) == []
        assert same(b.predict([random_graph(np.random.default_rng(7), 2, 1)]),
                    model.predict([random_graph(np.random.default_rng(7), 2, 1)]))


# -- issue 12: the no-wait path, deferred wake-ups and row views ----------------------------------
def test_run_now_runs_a_lone_request_inline_and_declines_when_busy(model):
    rng = np.random.default_rng(20)
    graphs = random_graphs(rng, 3)
    batches: list = []
    with Batcher(model, BatcherConfig(), on_batch=lambda g, n, ns: batches.append((g, n, ns))) as b:
        got, timing = b.run_now(graphs)
        assert same(list(got), model.predict(graphs)) and timing.queue_ns == 0 and timing.compute_ns > 0
        assert batches and batches[-1][0] == 3 and b.stats().succeeded == 1 and b.stats().batches == 1
        with pytest.raises(GraphValidationError):  # validated exactly like submit
            b.run_now([Graph(x=np.zeros((2, F), np.float32), edge_index=np.array([[0], [7]], np.int64))])
        assert b.stats().invalid == 1
    slow = SlowModel(model)
    slow.gate.clear()
    with Batcher(slow, BatcherConfig()) as b:
        first = b.submit([graphs[0]])
        deadline = time.time() + 5
        while b.queue_depth and time.time() < deadline:  # the worker took it and is blocked in the model
            time.sleep(0.001)
        assert b.run_now([graphs[1]]) is None  # busy: nothing validated, nothing counted
        assert b.stats().succeeded == 0 and b.stats().invalid == 0
        slow.gate.set()
        assert same(first.result(5), model.predict([graphs[0]]))
    with Batcher(model, BatcherConfig(max_queue_delay_us=100)) as b:
        assert b.run_now(graphs) is None  # a configured delay means: wait for a fuller batch


def test_batch_closes_before_its_delay_once_every_sender_has_a_request_queued(model):
    """most_outstanding: with 3 senders, 2 queued requests wait for the (long) delay; the
    third closes the batch at once, and a lower bound (a sender left) wakes it too."""
    rng = np.random.default_rng(22)
    requests = [random_graphs(rng, 1) for _ in range(5)]
    slow = SlowModel(model)
    senders = [3]
    with Batcher(slow, BatcherConfig(max_queue_delay_us=60_000_000)) as b:
        b.most_outstanding = lambda: senders[0]
        first = [b.submit(r) for r in requests[:2]]
        time.sleep(0.2)
        assert not any(f.done() for f in first) and slow.batch_sizes == []  # a third sender could still send
        third = b.submit(requests[2])
        got = [f.result(10) for f in first + [third]]  # far sooner than the 60 s delay
        assert slow.batch_sizes == [3]
        for r, g in zip(requests, got):
            assert same(list(g), model.predict(r))
        late = b.submit(requests[3])
        time.sleep(0.2)
        assert not late.done()  # 1 of 3 senders
        senders[0] = 1  # two of them went away: nobody else can join
        b.wake()
        assert same(list(late.result(10)), model.predict(requests[3]))
        assert slow.batch_sizes == [3, 1]
        b.most_outstanding = None  # unknown: the delay rules again
        waiting = b.submit(requests[4])
        time.sleep(0.2)
        assert not waiting.done()
    assert same(list(waiting.result(10)), model.predict(requests[4]))  # close() drains it


def test_most_outstanding_lets_run_now_take_a_lone_request_despite_a_delay(model):
    rng = np.random.default_rng(23)
    graphs = random_graphs(rng, 2)
    with Batcher(model, BatcherConfig(max_queue_delay_us=60_000_000)) as b:
        assert b.run_now(graphs) is None  # unknown senders: wait for a fuller batch
        b.most_outstanding = lambda: 2
        assert b.run_now(graphs) is None  # another sender could join
        b.most_outstanding = lambda: None
        assert b.run_now(graphs) is None
        b.most_outstanding = lambda: 1  # the caller is the only sender
        got, _ = b.run_now(graphs)
        assert same(list(got), model.predict(graphs))


def test_a_failing_most_outstanding_only_costs_the_delay(model, caplog):
    rng = np.random.default_rng(24)
    graphs = random_graphs(rng, 1)

    def broken() -> int:
        raise RuntimeError("no count")

    with Batcher(model, BatcherConfig(max_queue_delay_us=50_000)) as b:
        b.most_outstanding = broken
        assert same(list(b.submit(graphs).result(10)), model.predict(graphs))
        assert b.most_outstanding is None and "most_outstanding failed" in caplog.text


def test_deferred_wake_batches_what_was_queued_together(model):
    rng = np.random.default_rng(21)
    requests = [random_graphs(rng, 1) for _ in range(12)]
    sizes: list[int] = []
    with Batcher(model, BatcherConfig(max_batch_graphs=64), on_batch=lambda g, n, ns: sizes.append(g)) as b:
        futures = [b.submit(r, wake=False) for r in requests]
        time.sleep(0.05)
        assert not any(f.done() for f in futures)  # nobody woke the worker yet
        b.wake()
        results = [f.result(5) for f in futures]
    assert sizes == [12]
    for r, got in zip(requests, results):
        assert same(list(got), model.predict(r))


def test_batch_slices_are_row_views_and_per_graph_dicts(model):
    from edgemp.graph import collate
    from edgemp.runtime.batch_outputs import BatchSlice

    graphs = random_graphs(np.random.default_rng(22), 5)
    batch = collate(graphs)
    out = model.run_batch(batch)
    whole = model.split(out, batch)
    assert isinstance(whole, BatchSlice) and len(whole) == 5
    part = whole[1:4]
    want = model.predict(graphs)
    assert same(list(part), want[1:4]) and same([part[-1]], [want[3]])
    t = part.tensors(["prediction", "node_out"])
    n0, n1 = sum(g.num_nodes for g in graphs[:1]), sum(g.num_nodes for g in graphs[:4])
    assert np.shares_memory(t["prediction"], out["prediction"]) and t["prediction"].shape[0] == 3
    assert np.array_equal(t["node_out"], out["node_out"][n0:n1])
    with pytest.raises(IndexError):
        part[3]
    bad = dict(out, prediction=out["prediction"][:2])
    with pytest.raises(GraphValidationError, match="rows for 5 graphs"):
        model.split(bad, batch)


class Answers:
    """done(results, error, timing) callbacks for submit_callback, collected by request index."""

    def __init__(self, n: int) -> None:
        self.got: dict[int, tuple] = {}
        self.calls = 0
        self.all_in = threading.Event()
        self.n = n
        self.lock = threading.Lock()

    def for_request(self, i: int):
        def done(results, error, timing):
            with self.lock:
                self.calls += 1
                assert i not in self.got, f"request {i} answered twice"
                self.got[i] = (results, error, timing)
                if len(self.got) == self.n:
                    self.all_in.set()
        return done


def test_submit_callback_answers_each_request_once_with_its_own_rows(model):
    rng = np.random.default_rng(7)
    requests = [random_graphs(rng, int(rng.integers(1, 4))) for _ in range(300)]
    answers = Answers(len(requests))
    with Batcher(model, BatcherConfig(max_batch_graphs=32, max_queue_size=4096)) as b:
        for i, r in enumerate(requests):
            b.submit_callback(r, answers.for_request(i), wake=i % 7 == 6)
        b.wake()
        assert answers.all_in.wait(30)
        stats = b.stats()
    assert answers.calls == len(requests)
    for i, r in enumerate(requests):
        results, error, timing = answers.got[i]
        assert error is None and same(results, model.predict(r)), f"request {i} got someone else's answer"
        assert timing.compute_ns > 0 and timing.batch_graphs >= len(r)
    assert stats.succeeded == len(requests) and stats.batches < len(requests)


class SlowBatchCheckingModel(SlowModel):
    """SlowModel with the runtime Model's batch-wide check (the wrapper above has none)."""

    def validated_batch(self, graphs):
        return self.model.validated_batch(graphs)


@pytest.mark.parametrize("wrapper", [SlowBatchCheckingModel, SlowModel], ids=["batch-wide check", "per request"])
def test_check_in_batch_answers_a_malformed_request_alone_and_runs_the_rest(model, wrapper):
    """Graphs validated by the worker with their batch: the bad request gets the same error
    submit() raises, the good ones in its batch still get their own answers."""
    rng = np.random.default_rng(8)
    good = [random_graphs(rng, 2) for _ in range(6)]
    bad_nodes = [random_graph(rng, 3, 2), Graph(x=np.zeros((2, F), np.float32),
                                                edge_index=np.array([[0, 5], [1, 0]], np.int64))]
    bad_nan = [Graph(x=np.full((2, F), np.nan, np.float32), edge_index=np.zeros((2, 0), np.int64))]
    requests = good[:3] + [bad_nodes] + good[3:5] + [bad_nan] + good[5:]
    slow = wrapper(model)
    slow.gate.clear()  # hold the worker so every request lands in one batch
    answers = Answers(len(requests))
    with Batcher(slow, BatcherConfig(max_batch_graphs=64)) as b:
        b.submit_callback([random_graph(rng, 3, 2)], lambda *a: None)  # the worker blocks in this batch
        deadline = time.time() + 5
        while b.stats().queue_depth and time.time() < deadline:
            time.sleep(0.001)
        for i, r in enumerate(requests):
            b.submit_callback(r, answers.for_request(i), check_in_batch=True)
        slow.gate.set()
        assert answers.all_in.wait(30)
        stats = b.stats()
    for i, r in enumerate(requests):
        results, error, _ = answers.got[i]
        if r is bad_nodes:
            assert results is None and isinstance(error, GraphValidationError)
            assert "graph 1: edge_index holds node 5 but the graph has 2 nodes" in str(error)
        elif r is bad_nan:
            assert results is None and isinstance(error, GraphValidationError) and "NaN" in str(error)
        else:
            assert error is None and same(results, model.predict(r)), f"request {i} got someone else's answer"
    assert stats.invalid == 2 and stats.succeeded == len(good) + 1
    assert slow.batch_sizes[1] == sum(len(r) for r in good), "the good requests did not run as one batch"


def test_check_in_batch_request_is_validated_even_when_its_batch_fails(model):
    """A batch that fails re-runs its requests one by one; an unchecked one is validated first."""
    rng = np.random.default_rng(9)
    poison = random_graph(rng, 7, 2)
    bad = [Graph(x=np.zeros((3, F), np.float32), edge_index=np.array([[0], [9]], np.int64))]
    ok = [random_graph(rng, 3, 2)]
    slow = SlowBatchCheckingModel(model, poison_nodes=7)
    answers = Answers(3)
    with Batcher(slow, BatcherConfig(max_batch_graphs=64)) as b:
        for i, r in enumerate([[poison], bad, ok]):
            b.submit_callback(r, answers.for_request(i), wake=False, check_in_batch=True)
        b.wake()
        assert answers.all_in.wait(30)
    assert isinstance(answers.got[0][1], RuntimeError)
    assert isinstance(answers.got[1][1], GraphValidationError)
    assert answers.got[2][1] is None and same(answers.got[2][0], model.predict(ok))


def test_check_in_batch_not_a_graph_raises_at_submit(model):
    with Batcher(model) as b:
        with pytest.raises(GraphValidationError, match="expected an edgemp Graph"):
            b.submit_callback(["not a graph"], lambda *a: None, check_in_batch=True)
        assert b.stats().invalid == 1


def test_check_in_batch_malformed_request_gets_its_error_not_a_retryable_refusal(model):
    """A malformed request is never answered 'queue full' or 'timed out' (503s a client would
    retry) when its graphs are what is wrong: it is validated before it could be refused."""
    rng = np.random.default_rng(10)
    bad = [Graph(x=np.zeros((2, F), np.float32), edge_index=np.array([[0], [7]], np.int64))]
    slow = SlowBatchCheckingModel(model)
    slow.gate.clear()  # the worker holds the first batch
    answers = Answers(2)
    with Batcher(slow, BatcherConfig(max_batch_graphs=1, max_queue_size=2)) as b:
        try:
            b.submit_callback([random_graph(rng, 3, 2)], lambda *a: None)
            deadline = time.time() + 5
            while b.stats().queue_depth and time.time() < deadline:
                time.sleep(0.001)
            b.submit_callback(bad, answers.for_request(0), timeout_us=1_000, check_in_batch=True)  # expires queued
            b.submit_callback([random_graph(rng, 3, 2)], answers.for_request(1), check_in_batch=True)
            with pytest.raises(GraphValidationError, match="edge_index holds node 7"):  # the queue is full now
                b.submit_callback(bad, lambda *a: None, check_in_batch=True)
            time.sleep(0.01)
        finally:
            slow.gate.set()  # a failed check above must not leave the worker blocked (close() joins it)
        assert answers.all_in.wait(30)
    assert isinstance(answers.got[0][1], GraphValidationError), answers.got[0][1]
    assert answers.got[1][1] is None


class BrokenCheckModel(SlowBatchCheckingModel):
    """A model whose checks themselves fail (not a bad graph: e.g. out of memory) on a marked graph."""

    def validated_batch(self, graphs):
        self._raise_if_marked(graphs)
        return super().validated_batch(graphs)

    def validate(self, graphs):
        self._raise_if_marked(graphs)
        return super().validate(graphs)

    def _raise_if_marked(self, graphs):
        if any(g.num_nodes == 9 for g in graphs):
            raise MemoryError("no memory to check this graph")


def test_a_check_that_fails_answers_its_request_and_the_worker_lives_on(model):
    rng = np.random.default_rng(11)
    marked, ok = [random_graph(rng, 9, 2)], [random_graph(rng, 3, 2)]
    requests = [ok, marked, [random_graph(rng, 4, 2)]]
    answers = Answers(len(requests))
    with Batcher(BrokenCheckModel(model), BatcherConfig(max_batch_graphs=64)) as b:
        for i, r in enumerate(requests):
            b.submit_callback(r, answers.for_request(i), wake=False, check_in_batch=True)
        b.wake()
        assert answers.all_in.wait(30)
        later = b.submit(ok).result(10)  # the worker still serves
    assert isinstance(answers.got[1][1], MemoryError)
    assert answers.got[0][1] is None and same(answers.got[0][0], model.predict(ok))
    assert answers.got[2][1] is None and same(answers.got[2][0], model.predict(requests[2]))
    assert answers.calls == len(requests) and same(later, model.predict(ok))
