"""Fold a linear encoder into what follows it: GIN's first aggregation, or a next Linear (GCN).

GIN encodes node features with a Linear (F → H) and its first layer then sums
``c·h + Σ_j h_j`` before its MLP's first Linear (H → H'). Everything up to that Linear is
linear, so with ``x̃ = [x, 1]`` (F + 1 columns)::

    Linear₁(c·enc(x) + A·enc(x)) = (c·x̃ + A·x̃) · ([Wₑ; bₑ] · W₁) + b₁

The gather and the scatter-add then move F + 1 floats per edge instead of H, and one
(F + 1) × H' GEMM replaces the F × H encoder and the H × H' product: for the bench_pyg GIN
(F = 8, H = H' = 128) that is 12% of the model's GEMM FLOPs and one of its four wide
gather/scatter pairs. The ones column carries the bias through the sum (its aggregate is
``c + in-degree``). Only that exact chain is rewritten — a Gemm by weights whose output
feeds one row Gather and one (optionally scaled) self term of one ScatterND(add) whose
sum feeds one Gemm by weights — and export verification checks the numerics.

:func:`fold_linear_chains` handles the plainer case where the encoder feeds a Linear directly
(GCN's first ``lin``): two GEMMs become one. :func:`fold_bias_adds` moves a separate bias
``Add`` into the GEMM before it (GAT adds its bias to ``z = h·W``): ONNX Runtime fuses
MatMul + Add, but not Gemm + Add.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from edgemp.export.onnx_graph import node_attr as _attr
from edgemp.export.rewrite import finish_fold, graph_index, replace_nodes

log = logging.getLogger(__name__)


def _gemm_weight(node, inits: dict) -> np.ndarray | None:
    """The Gemm's B as ``[K, N]`` (row-vector form) if it is a plain ``A·B + C`` by an initializer."""
    from onnx import numpy_helper

    if node.op_type != "Gemm" or node.input[1] not in inits or _attr(node, "transA", 0) \
            or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
        return None
    w = numpy_helper.to_array(inits[node.input[1]])
    if w.ndim != 2:
        return None
    return w.T if _attr(node, "transB", 0) else w


def _scalar(name: str, inits: dict) -> bool:
    from onnx import numpy_helper

    return name in inits and numpy_helper.to_array(inits[name]).size == 1


def fold_encoder_into_aggregation(model) -> int:
    """Rewrite every matching encoder → GIN-sum → Linear chain in place; returns how many."""
    from onnx import helper, numpy_helper

    inits, _, found = graph_index(model)
    users: dict[str, list] = defaultdict(list, found)
    outputs = {o.name for o in model.graph.output}
    folded, stale = 0, set()
    for enc in list(model.graph.node):
        we = _gemm_weight(enc, inits)
        if we is None or enc.output[0] in outputs:
            continue
        bias_name = enc.input[2] if len(enc.input) > 2 and enc.input[2] else None
        if bias_name is not None and bias_name not in inits:
            continue
        f_in, hidden = we.shape
        be = numpy_helper.to_array(inits[bias_name]).reshape(-1) if bias_name else np.zeros(hidden, np.float32)
        if be.size != hidden or f_in + 1 >= hidden:
            continue
        h = enc.output[0]
        gathers = [n for n in users[h] if n.op_type == "Gather" and n.input[0] == h and _attr(n, "axis", 0) == 0]
        selfs = [n for n in users[h] if n not in gathers]
        if len(gathers) != 1 or len(selfs) != 1:
            continue
        gather, self_term = gathers[0], selfs[0]
        scale = None
        if self_term.op_type == "Mul":
            other = self_term.input[1] if self_term.input[0] == h else self_term.input[0]
            if not _scalar(other, inits) or len(users[self_term.output[0]]) != 1:
                continue
            scale, scaled = self_term, self_term.output[0]
            scatter = users[scaled][0]
        else:
            scaled, scatter = h, self_term
        if scatter.op_type != "ScatterND" or _attr(scatter, "reduction", b"none") not in (b"add", "add") \
                or scatter.input[0] != scaled or scatter.input[2] != gather.output[0] \
                or len(users[gather.output[0]]) != 1 or len(users[scatter.output[0]]) != 1:
            continue
        lin = users[scatter.output[0]][0]
        w1 = _gemm_weight(lin, inits)
        if w1 is None or lin.input[0] != scatter.output[0] or w1.shape[0] != hidden:
            continue
        fused = (np.concatenate([we, be[None, :]]).astype(np.float64) @ w1.astype(np.float64)).astype(np.float32)
        tag = f"{lin.name or lin.output[0]}_on_aggregated_input"
        wide = f"{tag}_x1"  # [N, F + 1]: x and a ones column
        model.graph.initializer.extend([
            numpy_helper.from_array(fused, f"{tag}_weight"),
            numpy_helper.from_array(np.array([0, 0, 0, 1], np.int64), f"{tag}_pads"),
            numpy_helper.from_array(np.array(1.0, np.float32), f"{tag}_one"),
        ])
        pad = helper.make_node("Pad", [enc.input[0], f"{tag}_pads", f"{tag}_one"], [wide], name=f"{tag}_pad")
        index = list(model.graph.node).index(enc)
        model.graph.node.remove(enc)
        model.graph.node.insert(index, pad)
        gather.input[0] = wide
        (scale if scale is not None else scatter).input[list((scale or scatter).input).index(h)] = wide
        lin.input[1] = f"{tag}_weight"
        for a in list(lin.attribute):
            if a.name == "transB":
                lin.attribute.remove(a)
        stale.update({h, gather.output[0], scaled, scatter.output[0]})
        folded += 1
    for v in [v for v in model.graph.value_info if v.name in stale]:  # widths changed: let inference redo them
        model.graph.value_info.remove(v)
    return finish_fold(model, folded, "linear encoders folded into the first aggregation (narrow gather/scatter)")


def fold_linear_chains(model) -> int:
    """``Gemm(Gemm(x, W₁, b₁), W₂, b₂)`` → ``Gemm(x, W₁·W₂, b₁·W₂ + b₂)`` in place; returns how many.

    GCN and GAT feed their encoder (F → H) straight into the first layer's Linear (H → H)
    with nothing between: two GEMMs where one (F → H) does. Only when the inner product's
    sole use is the outer one, both multiply by weight initializers and neither transposes A.
    """
    from onnx import helper, numpy_helper

    inits, producers, found = graph_index(model)
    users: dict[str, list] = defaultdict(list, found)
    outputs = {o.name for o in model.graph.output}
    folded = 0
    for outer in list(model.graph.node):
        w2 = _gemm_weight(outer, inits)
        inner = producers.get(outer.input[0]) if w2 is not None else None
        w1 = _gemm_weight(inner, inits) if inner is not None else None
        if w1 is None or len(users[inner.output[0]]) != 1 or inner.output[0] in outputs or w1.shape[1] != w2.shape[0]:
            continue
        biases = []
        for node, width in ((inner, w1.shape[1]), (outer, w2.shape[1])):
            name = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if name is not None and name not in inits:
                break
            bias = numpy_helper.to_array(inits[name]).astype(np.float64) if name else np.zeros(width)
            if bias.size != width:
                break
            biases.append(bias.reshape(-1))
        if len(biases) != 2:
            continue
        w = w1.astype(np.float64) @ w2.astype(np.float64)
        b = biases[0] @ w2.astype(np.float64) + biases[1]
        tag = f"{outer.name or outer.output[0]}_after_{inner.name or inner.output[0]}"
        model.graph.initializer.extend([numpy_helper.from_array(w.astype(np.float32), f"{tag}_weight"),
                                        numpy_helper.from_array(b.astype(np.float32), f"{tag}_bias")])
        fused = helper.make_node("Gemm", [inner.input[0], f"{tag}_weight", f"{tag}_bias"], list(outer.output), name=tag)
        replace_nodes(model, [outer, inner], fused, at=inner)
        producers[outer.output[0]] = fused
        folded += 1
    return finish_fold(model, folded, "consecutive Linear pairs folded into one GEMM each")


def fold_bias_adds(model) -> int:
    """``Add(Gemm(a, W[, c]), b)`` → ``Gemm(a, W, c + b)`` for a 1-D initializer ``b``; returns how many.

    Only when the Gemm's sole use is that Add and ``b`` has one value per output column (or one
    in all), so the sum is the same broadcast the Gemm applies to its C. Exact up to the order
    of one float addition (``(a·W + c) + b`` vs ``a·W + (c + b)``).
    """
    from onnx import numpy_helper

    inits, producers, found = graph_index(model)
    users: dict[str, list] = defaultdict(list, found)
    outputs = {o.name for o in model.graph.output}
    folded = 0
    for add in list(model.graph.node):
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        gemm = next((producers.get(i) for i in add.input if producers.get(i) is not None
                     and producers[i].op_type == "Gemm"), None)
        if gemm is None:
            continue
        bias_name = add.input[1] if add.input[0] == gemm.output[0] else add.input[0]
        w = _gemm_weight(gemm, inits)
        if w is None or bias_name not in inits or len(users[gemm.output[0]]) != 1 or gemm.output[0] in outputs:
            continue
        bias = numpy_helper.to_array(inits[bias_name])
        width = w.shape[1]
        if bias.ndim != 1 or bias.size not in (1, width) or bias.dtype != np.float32:
            continue
        old_c = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
        if old_c is not None and (old_c not in inits or numpy_helper.to_array(inits[old_c]).size not in (1, width)):
            continue
        total = np.broadcast_to(bias, (width,)).astype(np.float64)
        if old_c is not None:
            total = total + np.broadcast_to(numpy_helper.to_array(inits[old_c]).reshape(-1), (width,))
        tag = f"{gemm.name or gemm.output[0]}_bias_folded"
        model.graph.initializer.append(numpy_helper.from_array(total.astype(np.float32), tag))
        while len(gemm.input) < 3:
            gemm.input.append("")
        gemm.input[2] = tag
        gemm.output[0] = add.output[0]
        model.graph.node.remove(add)
        folded += 1
    return finish_fold(model, folded, "bias Adds folded into the GEMM before them")
