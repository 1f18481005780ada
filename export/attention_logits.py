"""GAT's per-head attention logits as one small GEMM instead of a broadcast Mul and a ReduceSum.

GAT computes ``z = h·Wᵀ`` viewed as ``[N, heads, C]`` and then each node's logits
``a[n, k] = Σ_c z[n, k, c]·att[k, c]`` (once for the source side, once for the target
side): an elementwise Mul over all of ``z`` and a ReduceSum, two passes over an
``[N, H]`` tensor per side and round (about 12% of the GAT run at 64 graphs, ORT's
profile). Both are linear in ``h``, so ``a = h·V`` with ``V[i, k] = Σ_c W[k·C + c, i]·att[k, c]``,
an ``[H_in, heads]`` weight folded at export: one ``[N, H_in] × [H_in, heads]`` product.
Only ``ReduceSum(Mul(Reshape(Gemm(h, W) → [-1, heads, C]), att [heads, C]), axes=[-1],
keepdims=0)`` with weight initializers is rewritten; ``z`` itself stays (the messages use it),
and export verification checks the numerics.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from edgemp.export.onnx_graph import const_ints as _const_ints
from edgemp.export.onnx_graph import node_attr as _attr
from edgemp.export.rewrite import finish_fold, graph_index, replace_nodes

log = logging.getLogger(__name__)

# Names of the folded logit MatMuls end with this; the int8 quantizer leaves them float
# (an [H, heads] product gains nothing from int8, and its logits feed a softmax).
LOGIT_NODE_SUFFIX = "_attention_logits"


def fold_attention_logits(model) -> int:
    """Rewrite every matching logit computation in place; returns how many."""
    from onnx import helper, numpy_helper

    inits, producers, found = graph_index(model)
    users: dict[str, list] = defaultdict(list, found)
    folded = 0
    for reduce in list(model.graph.node):
        if reduce.op_type != "ReduceSum" or len(reduce.input) < 2 or _const_ints(model, reduce.input[1]) != [-1] \
                or _attr(reduce, "keepdims", 1) != 0:
            continue
        mul = producers.get(reduce.input[0])
        if mul is None or mul.op_type != "Mul" or len(users[mul.output[0]]) != 1:
            continue
        att_name = next((i for i in mul.input if i in inits), None)
        view_name = next((i for i in mul.input if i != att_name), None)
        view = producers.get(view_name)
        if att_name is None or view is None or view.op_type != "Reshape":
            continue
        att = numpy_helper.to_array(inits[att_name])
        lin = producers.get(view.input[0])
        if att.ndim != 2 or lin is None or lin.op_type not in ("Gemm", "MatMul") or lin.input[1] not in inits:
            continue
        if lin.op_type == "Gemm" and (_attr(lin, "transA", 0) or _attr(lin, "alpha", 1.0) != 1.0
                                      or (len(lin.input) > 2 and lin.input[2])):
            continue  # a bias would add a constant per head: not worth a second pattern
        w = numpy_helper.to_array(inits[lin.input[1]])
        if w.ndim != 2:
            continue
        w = w.T if lin.op_type == "Gemm" and _attr(lin, "transB", 0) else w  # [H_in, H_out]
        heads, per_head = att.shape
        if _const_ints(model, view.input[1]) != [-1, heads, per_head] or w.shape[1] != heads * per_head:
            continue
        v = np.einsum("ikc,kc->ik", w.reshape(w.shape[0], heads, per_head).astype(np.float64), att.astype(np.float64))
        name = f"{reduce.name or reduce.output[0]}{LOGIT_NODE_SUFFIX}"
        model.graph.initializer.append(numpy_helper.from_array(v.astype(np.float32), f"{name}_weight"))
        matmul = helper.make_node("MatMul", [lin.input[0], f"{name}_weight"], list(reduce.output), name=name)
        replace_nodes(model, [reduce, mul], matmul, at=mul)  # mul: after Gemm's input, before the logits' uses
        users[view.output[0]].remove(mul)
        if not users[view.output[0]]:  # the [N, heads, C] view only fed the logits: gone with them
            model.graph.node.remove(view)
            users[lin.output[0]].remove(view)
        folded += 1
    if folded:
        merge_logit_products(model)
    return finish_fold(model, folded, "attention logits computed as one small GEMM each")


def merge_logit_products(model) -> int:
    """Folded logit MatMuls that read the same input → one ``[H_in, Σ heads]`` MatMul and a Split.

    GAT's source and target logits both multiply ``h``: an ``[N, H] × [H, heads]`` product is
    so narrow that ONNX Runtime's cost is mostly per call (~32 µs each for 1600 × 64 × 4 here),
    so one product twice as wide plus a Split of the small result is cheaper. Exact: the same
    dot products, column for column. Returns how many groups were merged.
    """
    from onnx import helper, numpy_helper

    inits, _, _ = graph_index(model)
    groups: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.name.endswith(LOGIT_NODE_SUFFIX) and node.input[1] in inits:
            groups[node.input[0]].append(node)
    merged = 0
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        if any(w.ndim != 2 for w in weights):
            continue
        name = f"{nodes[0].name.removesuffix(LOGIT_NODE_SUFFIX)}_merged{LOGIT_NODE_SUFFIX}"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}_weight"),
            numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{name}_splits"),
        ])
        matmul = helper.make_node("MatMul", [nodes[0].input[0], f"{name}_weight"], [f"{name}_out"], name=name)
        split = helper.make_node("Split", [f"{name}_out", f"{name}_splits"], [n.output[0] for n in nodes],
                                 name=f"{name}_split", axis=-1)
        first = min(list(model.graph.node).index(n) for n in nodes)  # every use of each output comes later
        for n in nodes:
            model.graph.node.remove(n)
        model.graph.node.insert(first, split)
        model.graph.node.insert(first, matmul)
        merged += 1
    return merged
