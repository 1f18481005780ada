"""Server and model metadata in the shapes KServe V2 clients and Triton tools expect.

``/v2/models/{m}`` is the V2 metadata; ``/config`` imitates Triton's ModelConfig JSON
closely enough for perf_analyzer (it reads ``max_batch_size`` and whether
``dynamic_batching`` exists). ``max_batch_size`` is 0 because dimension 0 of an edgemp
tensor is nodes or edges, not requests: batching happens on graphs, inside the server.
"""
from __future__ import annotations

from typing import Any

from edgemp import __version__
from edgemp.runtime.server.protocol import CONFIG_TYPES
from edgemp.runtime.server.served import ServedModel

SERVER_NAME = "edgemp"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "schedule_policy", "model_repository"]
PLATFORM = "onnxruntime_onnx"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def _platform(served: ServedModel) -> str:
    return "tensorrt_plan" if served.source.path.suffix == ".plan" else PLATFORM


def model_metadata(served: ServedModel) -> dict[str, Any]:
    return {
        "name": served.name,
        "versions": [served.version],
        "platform": _platform(served),
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in served.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in served.outputs],
    }


def model_config(served: ServedModel) -> dict[str, Any]:
    b = served.source.batcher
    gpu = any(p != "CPUExecutionProvider" for p in served.model.providers)
    return {
        "name": served.name,
        "platform": _platform(served),
        "backend": "onnxruntime" if _platform(served) == PLATFORM else "tensorrt",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 0,
        "input": [
            {"name": t.name, "data_type": CONFIG_TYPES[t.datatype], "format": "FORMAT_NONE", "dims": list(t.shape),
             "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}
            for t in served.inputs
        ],
        "output": [
            {"name": t.name, "data_type": CONFIG_TYPES[t.datatype], "dims": list(t.shape), "label_filename": "",
             "is_shape_tensor": False}
            for t in served.outputs
        ],
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": b.max_queue_delay_us,
            "preserve_ordering": True,
            "priority_levels": 0,
            "default_priority_level": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": b.default_timeout_us,
                "allow_timeout_override": True,
                "max_queue_size": b.max_queue_size,
            },
        },
        "instance_group": [{"name": served.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1}],
        "default_model_filename": served.source.path.name,
        "parameters": {
            **{k: {"string_value": v} for k, v in served.describe().items()},
            "edgemp_max_batch_graphs": {"string_value": str(b.max_batch_graphs)},
            "edgemp_max_batch_nodes": {"string_value": str(b.max_batch_nodes)},
            "edgemp_max_batch_edges": {"string_value": str(b.max_batch_edges)},
            "edgemp_providers": {"string_value": ",".join(served.model.providers)},
        },
        "model_transaction_policy": {"decoupled": False},
    }


def repository_index(models: dict[str, ServedModel], ready: bool, only_ready: bool = False) -> list[dict[str, str]]:
    """The repository index (the model_repository extension), by name: every model is loaded
    at start, so each is READY while the server is (``only_ready``: leave the others out)."""
    state = "READY" if ready else "UNAVAILABLE"
    if only_ready and not ready:
        return []
    return [{"name": s.name, "version": s.version, "state": state, "reason": ""}
            for s in (models[n] for n in sorted(models))]
