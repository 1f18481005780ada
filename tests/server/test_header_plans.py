"""A V2 binary header seen before is decoded through its plan: the same request as a full
decode, the same error for a bad body, and nothing kept that it should not keep."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from edgemp.runtime.server.header_plans import HeaderPlans
from edgemp.runtime.server.protocol import ProtocolError, decode_infer_request
from runtime_fixtures import random_graphs
from server_utils import batch_tensors, v2_binary_body, v2_json_body

TYPES = {"x": "FP32", "edge_index": "INT64", "node_graph": "INT64", "graph_node_counts": "INT64"}


def _body(seed: int, k: int = 1, **kw) -> tuple[bytes, str]:
    graphs = random_graphs(np.random.default_rng(seed), k, max_nodes=12)
    body, n = v2_binary_body(batch_tensors(graphs), **kw)
    return body, str(n)


def _same(a, b) -> None:
    assert (a.id, a.parameters, a.outputs, a.binary_default) == (b.id, b.parameters, b.outputs, b.binary_default)
    assert list(a.inputs) == list(b.inputs)
    for name in a.inputs:
        assert a.inputs[name].dtype == b.inputs[name].dtype and np.array_equal(a.inputs[name], b.inputs[name])


def test_a_known_header_decodes_as_the_full_decode_does():
    plans = HeaderPlans()
    bodies = [_body(seed) for seed in range(40)]
    for body, n in bodies + bodies:  # every header twice: the second time through its plan
        _same(plans.decode(body, n, TYPES), decode_infer_request(body, n, TYPES))
    assert 0 < len(plans) <= len(bodies)
    body, n = bodies[0]  # same header, other tensor values: the plan reads this body's bytes
    other = body[: int(n)] + bytes(255 - c for c in body[int(n):])
    _same(plans.decode(other, n, TYPES), decode_infer_request(other, n, TYPES))


@pytest.mark.parametrize("cut", [-8, 8])
def test_a_known_header_over_a_bad_body_gets_the_full_decode_error(cut):
    plans = HeaderPlans()
    body, n = _body(3)
    plans.decode(body, n, TYPES)
    bad = body[:cut] if cut < 0 else body + bytes(cut)
    with pytest.raises(ProtocolError) as planned:
        plans.decode(bad, n, TYPES)
    with pytest.raises(ProtocolError) as full:
        decode_infer_request(bad, n, TYPES)
    assert str(planned.value) == str(full.value)


def test_headers_that_cannot_be_replayed_are_not_kept():
    plans = HeaderPlans()
    body, n = _body(1, request_id="req-7")  # an id makes every header different
    assert plans.decode(body, n, TYPES).id == "req-7"
    json_body = v2_json_body(batch_tensors(random_graphs(np.random.default_rng(2), 1, max_nodes=8)))
    plans.decode(json_body, None, TYPES)
    assert len(plans) == 0


def test_plans_are_bounded_and_keep_no_body_alive():
    plans = HeaderPlans(max_plans=4)
    for seed in range(12):
        body, n = _body(seed, k=1 + seed % 3)
        before = sys.getrefcount(body)
        request = plans.decode(body, n, TYPES)
        del request
        assert sys.getrefcount(body) == before  # no array view of this body stays in a plan
    assert len(plans) <= 4


@pytest.mark.parametrize("header_length", ["²", "٣", "+46", " 46", "00046", "x"])
def test_odd_header_lengths_get_the_full_decode_answer(header_length):
    plans = HeaderPlans()
    body, n = _body(4)
    plans.decode(body, n, TYPES)  # a plan exists for this header
    try:
        expected = decode_infer_request(body, header_length, TYPES)
    except ProtocolError as e:
        with pytest.raises(ProtocolError, match=re.escape(str(e))):
            plans.decode(body, header_length, TYPES)
    else:
        _same(plans.decode(body, header_length, TYPES), expected)


def test_the_server_heap_is_frozen_only_while_it_serves():
    import gc

    from edgemp.runtime.server.heap import frozen_startup_heap

    before = gc.get_freeze_count()
    with frozen_startup_heap():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == before


@pytest.fixture(scope="module")
def served(model_path):
    from edgemp.runtime.batcher import BatcherConfig
    from edgemp.runtime.server import discover
    from edgemp.runtime.server.served import ServedModel

    s = ServedModel.load(discover(model_path, BatcherConfig(), name="gnn")[0])
    yield s
    s.close()


def _tampered(tensors: dict, field: str) -> dict:
    out = {k: v.copy() for k, v in tensors.items()}
    if field == "node_graph":
        out["node_graph"][-1] = 1  # one graph: every entry must be 0
    elif field == "graph_node_counts":
        out["graph_node_counts"][0] += 1  # no longer the node count
    else:
        out["edge_index"][0, 0] = 10_000  # out of range: found by the batch-wide check, not here
    return out


@pytest.mark.parametrize("field", ["node_graph", "graph_node_counts", "edge_index"])
def test_a_plans_later_request_has_its_values_checked_like_the_first(served, field):
    """The shape checks of a one-graph request are done once per header; its values are
    checked on every request, with the full path's error."""
    from edgemp.runtime.server.v2 import HttpCall

    served.header_plans = HeaderPlans()  # this case's plans only
    rng = np.random.default_rng(31)
    graphs = random_graphs(rng, 1, max_nodes=9)
    while graphs[0].edge_index.shape[1] == 0:
        graphs = random_graphs(rng, 1, max_nodes=9)
    tensors = batch_tensors(graphs)
    good, n = v2_binary_body(tensors)
    assert HttpCall(served, served.header_plans.decode(good, str(n), served.input_types)).request.memo is None
    first = HttpCall(served, served.header_plans.decode(good, str(n), served.input_types))  # through the plan
    assert first.request.memo is not None and first.request.memo.get("one_graph")
    bad, n_bad = v2_binary_body(_tampered(tensors, field))
    assert bad[:n_bad] == good[:n]  # the same header: decoded through the plan
    planned = served.header_plans.decode(bad, str(n_bad), served.input_types)
    assert planned.memo is first.request.memo
    full = decode_infer_request(bad, str(n_bad), served.input_types)
    assert full.memo is None
    if field == "edge_index":  # values the batcher's batch-wide validation judges, for both paths alike
        assert HttpCall(served, planned).items[0].edge_index[0, 0] == 10_000
        return
    with pytest.raises(ProtocolError) as through_plan:
        HttpCall(served, planned)
    with pytest.raises(ProtocolError) as through_full:
        HttpCall(served, full)
    assert str(through_plan.value) == str(through_full.value)
    again = HttpCall(served, served.header_plans.decode(good, str(n), served.input_types))
    assert np.array_equal(again.items[0].x, graphs[0].x)


def test_a_plans_kept_response_header_gives_the_full_encode_bytes(served):
    """The response JSON header kept per plan is reused only for outputs of the same shapes:
    each answer is byte for byte what the full encode gives, for every body of the plan."""
    from edgemp.runtime.server.protocol import encode_infer_response
    from edgemp.runtime.server.v2 import HttpCall

    served.header_plans = HeaderPlans()
    rng = np.random.default_rng(41)
    base = random_graphs(rng, 1, max_nodes=8)[0]
    answers = []
    for i in range(4):
        g = type(base)(x=rng.standard_normal(base.x.shape).astype(np.float32), edge_index=base.edge_index,
                       edge_attr=base.edge_attr)
        body, n = v2_binary_body(batch_tensors([g]))
        call = HttpCall(served, served.header_plans.decode(body, str(n), served.input_types))
        assert (call.request.memo is not None) == (i > 0)  # the first decode makes the plan
        results = served.model.predict(call.items)
        got = call.encode(results)
        want = encode_infer_response(served.name, served.version, call.request, call.outputs(results))
        assert got == want
        answers.append(got[0])
    assert len(set(answers)) == 4  # different values, different answers
    assert len(call.request.memo["response_headers"]) == 1


def test_no_outputs_asked_is_answered_in_json_every_time(served):
    """A request asking for no outputs has no binary part: never a kept binary header."""
    import json

    from edgemp.runtime.server.v2 import HttpCall

    served.header_plans = HeaderPlans()
    tensors = batch_tensors(random_graphs(np.random.default_rng(51), 1, max_nodes=8))
    header = json.dumps({"inputs": [{"name": k, "datatype": TYPES[k], "shape": list(v.shape),
                                     "parameters": {"binary_data_size": v.nbytes}} for k, v in tensors.items()],
                         "outputs": [], "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(v.tobytes() for v in tensors.values())
    for _ in range(3):  # full decode, then through the plan twice
        call = HttpCall(served, served.header_plans.decode(body, str(len(header)), served.input_types))
        payload, json_length = call.encode(served.model.predict(call.items))
        assert json_length is None and json.loads(payload)["outputs"] == []
