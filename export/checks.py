"""Structural checks on an exported graph: unrolled, weights stored once, valid ONNX."""
from __future__ import annotations

import numpy as np

from edgemp.errors import ExportError
from edgemp.export.lint import LOOP_OPS
from edgemp.export.onnx_graph import walk_nodes


def control_flow_nodes(model) -> list[str]:
    return [f"{n.name} ({n.op_type})" for n in walk_nodes(model.graph) if n.op_type in LOOP_OPS]


def require_unrolled(model) -> None:
    found = control_flow_nodes(model)
    if found:
        raise ExportError(f"exported graph still has control flow (the K rounds must unroll): {found[:5]}")


def dedupe_initializers(model) -> int:
    """Store identical initializers once; returns how many copies were dropped.

    The dynamo exporter constant-folds ``W.T`` separately at every use of a weight applied
    to a rank-3 input (e.g. a shared GGNN layer in the dense form), so K rounds would
    store K copies. Merging byte-identical constants keeps shared weights shared.
    """
    import hashlib

    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for init in model.graph.initializer:
        if not init.raw_data:  # tiny constants stored as typed fields: not worth merging
            continue
        key = (init.data_type, tuple(init.dims), hashlib.sha256(init.raw_data).hexdigest())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
    # An initializer that doubles as a graph input or output keeps its own name.
    exposed = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    rename = {k: v for k, v in rename.items() if k not in exposed}
    keep = [i for i in model.graph.initializer if i.name not in rename]
    if not rename:
        return 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    value_info = [v for v in model.graph.value_info if v.name not in rename]
    del model.graph.value_info[:]
    model.graph.value_info.extend(value_info)
    return len(rename)


def float_initializer_count(model) -> int:
    """Elements in floating-point initializers: the weights stored in the file."""
    total = 0
    for init in model.graph.initializer:
        if init.data_type in (1, 10, 11, 16):  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
            total += int(np.prod(init.dims)) if init.dims else 1
    return total


def require_weights_once(model, module_param_count: int, buffer_count: int) -> int:
    """Each parameter must be stored once, whatever K is (shared weights stay shared).

    The file may additionally hold the model's buffers and a few scalar constants the
    exporter materialises; more than that means a weight was duplicated. It may hold a
    few values fewer: constant folding merges e.g. GIN's ``1 + eps`` into one constant.
    """
    in_file = float_initializer_count(model)
    slack = buffer_count + 64  # scalar constants (1.0, -inf, eps...) folded by the exporter
    if in_file > module_param_count + slack:
        raise ExportError(
            f"the ONNX file stores {in_file} weight values but the model has {module_param_count} "
            "parameters: weights were duplicated (shared weights must be stored once)"
        )
    return in_file
