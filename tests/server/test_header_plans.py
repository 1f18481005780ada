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
