"""Run an exported edge network once per *distinct* edge-feature row.

Gilmer's MPNN maps every edge's features through an MLP to an H×H matrix (Fe → 2H → H²,
~0.5 MMAC per edge at H = 64): most of the model's arithmetic. A molecule batch holds
only a handful of distinct bond-feature rows (10 in 64 solubility molecules with 1,102
bonds), so the exported graph is rewritten to run the network on ``Unique(edge_attr,
axis=0)`` and to compute each round's messages as *type products*: one GEMM of every node
state with every distinct matrix, then one gathered row per edge. No ``[E, H, H]`` tensor
is built at all. Row-wise ops give the same row for the same input, so this is the same
computation, not repeated; export verification (a bond-type-like case and continuous,
all-distinct features) checks the numerics against eager PyTorch.

Continuous features make every row distinct, and type products would then cost N× more.
The graph therefore picks, from the batch's own sizes, type products or the exported
per-edge products (no If: the branch not taken runs on zero rows), so such graphs pay only
a ``Unique`` and a few empty ops. The crossover weight was measured here
(benchmarks/results/mpnn.md).

Only a chain of row-wise nodes (Gemm / MatMul by a weight, bias Add, elementwise
activations) from ``edge_attr`` to a ``Reshape`` into H×H matrices that feed per-edge
matrix-vector products is rewritten: GINE's cheap Fe → H projection stays as is.
TensorRT's parser has no ``Unique``: the rewrite is for the ONNX Runtime targets only.
"""
from __future__ import annotations

import logging

from edgemp.export.onnx_graph import const_ints as _const_ints
from edgemp.export.onnx_graph import node_attr as _attr

log = logging.getLogger(__name__)

EDGE_INPUT = "edge_attr"
ROW_WISE_UNARY = frozenset({"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Gelu", "Softplus"})
# Rewrite only when the chain spends at least this many multiply-adds per output element
# (Gilmer's MPNN: ~128): cheaper networks do not pay for the Unique and the extra nodes.
MIN_MACS_PER_OUTPUT = 16


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _row_wise(node, value: str, inits: dict) -> tuple[int, int] | None:
    """``(macs_per_row, out_width)`` if ``node`` maps rows of ``value`` independently, else None.

    ``out_width`` is 0 when the node keeps the width of its input (activations, bias).
    """
    if node.op_type == "Gemm":
        if node.input[0] != value or node.input[1] not in inits or _attr(node, "transA", 0):
            return None
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            return None
        dims = list(inits[node.input[1]].dims)
        k, n = (dims[1], dims[0]) if _attr(node, "transB", 0) else (dims[0], dims[1])
        return k * n, n
    if node.op_type == "MatMul" and node.input[0] == value and node.input[1] in inits:
        dims = list(inits[node.input[1]].dims)
        return (dims[0] * dims[1], dims[1]) if len(dims) == 2 else None
    if node.op_type in ("Add", "Mul") and value in node.input:
        other = node.input[1] if node.input[0] == value else node.input[0]
        return (0, 0) if other in inits and len(inits[other].dims) <= 1 else None
    if node.op_type in ROW_WISE_UNARY and len(node.input) == 1:
        return 0, 0
    return None


def _edge_chain(model) -> tuple[list, int, int] | None:
    """The row-wise nodes that consume ``edge_attr`` alone, their MACs per row and output width."""
    inits = _initializers(model)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chain, macs, width, value = [], 0, 0, EDGE_INPUT
    while True:
        users = consumers.get(value, [])
        step = _row_wise(users[0], value, inits) if len(users) == 1 else None
        if step is None:
            break
        chain.append(users[0])
        macs += step[0]
        width = step[1] or width
        value = users[0].output[0]
    return (chain, macs, width) if chain and width else None


def _per_edge_products(model, matrices: str) -> list[tuple] | None:
    """Every ``Squeeze(MatMul(matrices, Unsqueeze(Gather(h, src), -1)), -1)``: one per round.

    Returns ``[(gather, unsqueeze, matmul, squeeze), ...]`` when *all* uses of
    ``matrices`` have that form and gather by the same source index, else None.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rounds, src = [], None
    for mm in consumers.get(matrices, []):
        if mm.op_type != "MatMul" or mm.input[0] != matrices:
            return None
        unsq = producers.get(mm.input[1])
        gather = producers.get(unsq.input[0]) if unsq is not None and unsq.op_type == "Unsqueeze" else None
        users = consumers.get(mm.output[0], [])
        if gather is None or gather.op_type != "Gather" or _attr(gather, "axis", 0) != 0 or len(users) != 1:
            return None
        squeeze = users[0]
        if squeeze.op_type != "Squeeze" or len(consumers.get(unsq.output[0], [])) != 1:
            return None
        if len(consumers.get(gather.output[0], [])) != 1 or src not in (None, gather.input[1]):
            return None
        if _const_ints(model, unsq.input[1]) != [-1] or _const_ints(model, squeeze.input[1]) != [-1]:
            return None
        src = gather.input[1]
        rounds.append((gather, unsq, mm, squeeze))
    return rounds or None


def _topological(model, nodes: list) -> list:
    """Nodes in an order where every input is produced before use (stable otherwise)."""
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"cycle or missing input near {rest[0].op_type} {list(rest[0].input)}")
        pending = rest
    return ordered


# Relative cost of one multiply-add in a batched H×H matrix-vector product (each edge reads
# its own 16 KB matrix: memory-bound) against one in a plain GEMM (MLAS, cache-blocked).
# Measured on the 2-core dev box, ORT 1.32, H = 64: the two forms cross near U = 100 distinct
# rows for 551 nodes / 1,102 edges, i.e. G ≈ 11; 8 leans to the per-edge form (benchmarks/results/mpnn.md).
GEMV_TO_GEMM_COST = 8


def edge_network_on_distinct_rows(model, gemv_to_gemm_cost: int = GEMV_TO_GEMM_COST) -> int:
    """Rewrite Gilmer-style edge networks in place; returns how many per-round products changed.

    The edge matrices ``A(e)`` are computed once per distinct edge-feature row. Each round's
    messages ``A(e) h_src(e)`` then take whichever product is cheaper *for the batch at hand*,
    chosen inside the graph from its sizes (no If: the unused branch runs on zero rows):

    * type products: one GEMM ``h [N, H] @ [H, U·H]`` (every node times every distinct
      matrix), then a gather of row ``(src, row_of_edge)`` per edge — cheap when U is small;
    * per-edge products (the exported form): the edge network on every edge and a batched
      matrix-vector product — when nearly every edge has its own features (continuous ones),
      so such graphs pay only a ``Unique`` and a few empty ops.

    ``gemv_to_gemm_cost`` weighs the two (tests force either branch with a huge ±value).
    """
    import onnx
    from onnx import TensorProto, helper

    names = {i.name for i in model.graph.input}
    if EDGE_INPUT not in names or "x" not in names:
        return 0
    found = _edge_chain(model)
    if found is None:
        return 0
    chain, macs, width = found
    per_edge = chain[-1].output[0]
    users = [n for n in model.graph.node if per_edge in n.input]
    if len(users) != 1 or users[0].op_type != "Reshape":
        return 0
    reshape = users[0]
    shape = _const_ints(model, reshape.input[1])
    if shape is None or len(shape) != 3 or shape[1] != shape[2] or shape[1] * shape[2] != width:
        return 0
    hidden = shape[1]
    rounds = _per_edge_products(model, reshape.output[0])
    if rounds is None:
        return 0
    if macs < MIN_MACS_PER_OUTPUT * width:
        return 0
    src = rounds[0][0].input[1]
    new: list = []
    consts: list = []

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        new.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(name: str, values: list[int]) -> str:
        consts.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    p = "distinct_rows_"
    zero, one = const(p + "zero", [0]), const(p + "one", [1])
    # Sizes and the choice of product, as int64 [1] tensors.
    new.append(helper.make_node("Unique", [EDGE_INPUT], [p + "rows", "", p + "row_of_edge", ""],
                                name=p + "unique", axis=0, sorted=0))
    e = node("Shape", [EDGE_INPUT], p + "E", start=0, end=1)
    u = node("Shape", [p + "rows"], p + "U", start=0, end=1)
    n = node("Shape", ["x"], p + "N", start=0, end=1)
    # cost(type products) = U·(R·N + C1) vs cost(per edge) = E·(C1 + R·G), in H² multiply-adds.
    c1 = max(macs // (hidden * hidden), 1)
    type_cost = node("Mul", [u, node("Add", [node("Mul", [n, const(p + "R", [len(rounds)])], p + "RN"),
                                              const(p + "C1", [c1])], p + "RN_C1")], p + "type_cost")
    edge_cost = node("Mul", [e, const(p + "per_edge_unit", [c1 + len(rounds) * gemv_to_gemm_cost])], p + "edge_cost")
    by_type = node("Cast", [node("LessOrEqual", [type_cost, edge_cost], p + "le")], p + "by_type", to=TensorProto.INT64)
    by_edge = node("Sub", [one, by_type], p + "by_edge")
    u_t = node("Mul", [u, by_type], p + "U_t")  # U or 0
    e_t = node("Mul", [e, by_type], p + "E_t")  # E or 0: edges done by type products
    e_e = node("Mul", [e, by_edge], p + "E_e")  # 0 or E: edges done one by one
    rows_t = node("Slice", [p + "rows", zero, u_t, zero], p + "rows_t")
    attr_e = node("Slice", [EDGE_INPUT, zero, e_e, zero], p + "attr_e")
    # ONE edge network (the exported nodes, rewired) on [edges done one by one; distinct rows]:
    # one part is empty, and int8 calibration always sees the network run on real rows.
    for i, name in enumerate(chain[0].input):
        if name == EDGE_INPUT:
            chain[0].input[i] = node("Concat", [attr_e, rows_t], p + "edge_net_rows", axis=0)
    mats = reshape.output[0]  # [E_e + U_t, H, H] = [out, in]
    mats_t = node("Slice", [mats, e_e, node("Add", [e_e, u_t], p + "E_e_plus_U_t"), zero], p + "mats_t")
    # [U_t, H_out, H_in] -> [H_in, U_t·H_out]: one GEMM gives every node times every matrix.
    cols_t = node("Reshape", [node("Transpose", [mats_t], p + "mats_in_first", perm=[2, 0, 1]),
                              const(p + "cols_shape", [hidden, -1])], p + "cols_t")
    # Plus one spare zero block, so this GEMM never has an empty operand: int8 calibration
    # (ORT's histogram calibrators) fails on a MatMul input that is empty in every batch.
    spare = node("ConstantOfShape", [const(p + "spare_shape", [hidden, hidden])], p + "spare_block")
    mats_cols = node("Concat", [cols_t, spare], p + "mats_cols", axis=1)  # [H, (U_t + 1)·H]
    blocks = node("Add", [u_t, one], p + "blocks")
    src_t = node("Slice", [src, zero, e_t, zero], p + "src_t")
    row_t = node("Slice", [p + "row_of_edge", zero, e_t, zero], p + "row_t")
    pick = node("Add", [node("Mul", [src_t, blocks], p + "src_times_blocks"), row_t], p + "pick")  # src·(U+1) + row
    # Per-edge products run over all E_e + U_t matrices (the U_t extra ones read node 0, are
    # dropped, and exist only when E_e = 0): no copy of the big [E, H, H] tensor either way.
    src_e = node("Concat", [node("Slice", [src, zero, e_e, zero], p + "src_e_only"),
                            node("Expand", [zero, u_t], p + "node0_for_rows")], p + "src_e", axis=0)
    hidden_rows = const(p + "row_shape", [-1, hidden])
    for k, (gather, unsq, mm, squeeze) in enumerate(rounds):
        h, q = gather.input[0], f"{p}round{k}_"
        by_node = node("Reshape", [node("MatMul", [h, mats_cols], q + "node_products"), hidden_rows],
                       q + "node_type_rows")  # [N·(U_t + 1), H]
        msg_t = node("Gather", [by_node, pick], q + "msg_t", axis=0)  # [E_t, H]
        h_src = node("Unsqueeze", [node("Gather", [h, src_e], q + "h_src_e", axis=0), unsq.input[1]], q + "h_src_col")
        prod = node("Squeeze", [node("MatMul", [mats, h_src], q + "mm_e"), squeeze.input[1]], q + "prod_e")
        msg_e = node("Slice", [prod, zero, e_e, zero], q + "msg_e")  # [E_e, H]
        node("Concat", [msg_t, msg_e], squeeze.output[0], axis=0)  # exactly one part has rows
    dead = {id(x) for r in rounds for x in r}
    kept = [x for x in model.graph.node if id(x) not in dead]
    model.graph.initializer.extend(consts)
    ordered = _topological(model, kept + new)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    stale = {x.output[0] for x in chain} | {reshape.output[0]}
    keep_info = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep_info)
    onnx.checker.check_model(model)
    log.info("edge network (%d MACs per edge) runs once per distinct edge-feature row; %d round(s) choose "
             "type or per-edge products by size", macs, len(rounds))
    return len(rounds)
