"""Merge biased MatMuls that read the same input into one wider MatMul (Q, K and V as one).

In a BERT layer the query, key and value projections all read the same LayerNorm output:
``x @ Wq + bq``, ``x @ Wk + bk``, ``x @ Wv + bv``. Concatenating the weights column-wise
(``[K, Nq + Nk + Nv]``) and the biases, then splitting the result, computes the same numbers
(each output column is the same dot product; ORT's fp32 output is bit-identical on MiniLM).
In dynamic int8, ORT then runs one fused DynamicQuantizeMatMul three times as wide instead of a
DynamicQuantizeLinear and three narrow MatMulIntegerToFloat (MiniLM-L6, 1 thread, 128 tokens:
7.6 -> 7.4 ms of GEMM, less a 0.1 ms Split; about 0.5% of the model). Per-channel weight
quantization scales each output column on its own, so the merged weight quantizes exactly as
the three did. In fp32 the merge measured 0.7% slower, so only the int8 path uses it.

The pattern is found by graph structure only (no node names): a tensor read by two or more
MatMuls whose weights are constant 2-D initializers used nowhere else, each MatMul's output
read by exactly one ``Add`` with a constant bias of the MatMul's width. Anything else is left
as it is.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgemp.export.smooth_quant import constant_value

log = logging.getLogger(__name__)

MERGED_SUFFIX = "_merged"  # name suffix of the merged MatMul / Add / Split nodes and their tensors


def _biased_projection(mm: Any, inits: dict[str, Any], producer: dict[str, Any],
                       consumers: dict[str, list[Any]]) -> tuple[np.ndarray, Any, np.ndarray] | None:
    """``(weight [K, N], bias Add, bias [N])`` when ``mm`` is ``x @ W`` + constant bias, else None."""
    from onnx import numpy_helper

    w_name = mm.input[1]
    if w_name not in inits or len(consumers.get(w_name, [])) != 1:
        return None
    w = numpy_helper.to_array(inits[w_name])
    nxt = consumers.get(mm.output[0], [])
    if w.ndim != 2 or len(nxt) != 1 or nxt[0].op_type != "Add" or len(nxt[0].input) != 2:
        return None
    add = nxt[0]
    other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
    if other == mm.output[0]:
        return None
    bias = constant_value(other, inits, producer)
    if bias is None or bias.shape != (w.shape[1],) or bias.dtype != w.dtype:
        return None
    return w, add, bias


def merge_shared_input_matmuls(model: Any) -> tuple[Any, int]:
    """A copy of ``model`` in which each group of biased MatMuls sharing an input is one
    MatMul + one bias Add + a ``Split`` into the original outputs; returns it and the number of
    groups merged. Outputs are the same up to float rounding (the dot products are unchanged)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    opset = max((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), default=0)
    groups: dict[str, list[tuple[Any, np.ndarray, Any, np.ndarray]]] = {}
    for n in graph.node:
        if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and n.input[0] not in inits:
            found = _biased_projection(n, inits, producer, consumers)
            if found is not None:
                groups.setdefault(n.input[0], []).append((n, *found))
    replace: dict[int, list[Any]] = {}  # id(first MatMul of a group) -> the merged nodes
    drop: set[int] = set()  # ids of the MatMuls and Adds the merged nodes replace
    merged = 0
    for x, members in groups.items():
        k = {w.shape[0] for _, w, _, _ in members}
        if len(members) < 2 or len(k) != 1 or len({w.dtype for _, w, _, _ in members}) != 1:
            continue
        base = f"{members[0][0].name or x}{MERGED_SUFFIX}"
        w_name, b_name, mm_out, add_out = (f"{base}_weight", f"{base}_bias", f"{base}_matmul_output",
                                           f"{base}_add_output")
        widths = [w.shape[1] for _, w, _, _ in members]
        graph.initializer.extend([
            numpy_helper.from_array(np.concatenate([w for _, w, _, _ in members], axis=1), w_name),
            numpy_helper.from_array(np.concatenate([b for _, _, _, b in members]), b_name)])
        nodes = [helper.make_node("MatMul", [x, w_name], [mm_out], name=f"{base}_MatMul"),
                 helper.make_node("Add", [mm_out, b_name], [add_out], name=f"{base}_Add")]
        outputs = [add.output[0] for _, _, add, _ in members]
        if opset >= 13:  # split sizes moved from an attribute to an input in opset 13
            split_name = f"{base}_split"
            graph.initializer.append(numpy_helper.from_array(np.asarray(widths, np.int64), split_name))
            nodes.append(helper.make_node("Split", [add_out, split_name], outputs, name=f"{base}_Split", axis=-1))
        else:
            nodes.append(helper.make_node("Split", [add_out], outputs, name=f"{base}_Split", axis=-1, split=widths))
        replace[id(members[0][0])] = nodes
        for mm, w, add, _ in members:
            drop.update((id(mm), id(add)))
        merged += 1
    if not merged:
        return out, 0
    nodes = []
    for n in graph.node:
        nodes += replace.get(id(n), [] if id(n) in drop else [n])
    del graph.node[:]
    graph.node.extend(nodes)
    # the separate weights and biases are now unused (biases may still be read elsewhere)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = {i.name for i in graph.initializer} - used
    for field in (graph.initializer, graph.input):  # old IR versions list initializers as inputs too
        kept = [i for i in field if i.name not in unused]
        del field[:]
        field.extend(kept)
    log.info("merged %d groups of MatMuls that share an input", merged)
    return out, merged
