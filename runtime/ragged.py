"""The Triton ragged layout; it lives in the numpy core (:mod:`edgemp.ragged_layout`).

Kept so ``from edgemp.runtime import ragged`` goes on working.
"""
from edgemp.ragged_layout import (
    BATCH_INPUT_KINDS,
    EDGE_OFFSETS,
    FORM,
    WIDTH_PARAMETERS,
    X_OFFSETS,
    BatchInput,
    RaggedInput,
    RaggedLayout,
    batch_input_value,
    feeds_from_batch,
    graph_to_request,
    layout,
    request_to_graph,
    split_outputs,
    triton_batch,
)

__all__ = [
    "BATCH_INPUT_KINDS", "EDGE_OFFSETS", "FORM", "WIDTH_PARAMETERS", "X_OFFSETS", "BatchInput", "RaggedInput",
    "RaggedLayout", "batch_input_value", "feeds_from_batch", "graph_to_request", "layout", "request_to_graph",
    "split_outputs", "triton_batch",
]
