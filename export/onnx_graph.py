"""Reading an ONNX graph: node attributes, constant integers, every node including subgraphs.

The lints, the structural checks and the post-export rewrites all read graphs the same
way; one copy here keeps them agreeing (a rewrite and the lint that checks its result must
see the same attribute defaults).
"""
from __future__ import annotations

from typing import Any, Iterator


def node_attr(node, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of an ``onnx.NodeProto``, ``default`` if it has none."""
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def const_ints(model, name: str) -> list[int] | None:
    """The flattened integers of tensor ``name`` when it is an initializer or a Constant node, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).reshape(-1).tolist()
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = node_attr(node, "value")
            return None if value is None else numpy_helper.to_array(value).reshape(-1).tolist()
    return None


def walk_nodes(graph) -> Iterator:
    """All nodes of ``graph``, including those inside subgraphs (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.g is not None and a.g.node:
                yield from walk_nodes(a.g)
