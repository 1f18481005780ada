"""Triton Python-backend model: an edgemp Triton-ragged ONNX model run by ``edgemp.runtime``.

Written by ``edgemp export triton CKPT --repo DIR --backend python`` into
``DIR/<name>/<version>/model.py`` beside ``model.onnx``. Triton's dynamic batcher hands
``execute`` a list of requests, each one graph in the flat layout of
:mod:`edgemp.ragged_layout` (``x [1, n*F]``, ``edge_index [1, 2*E]``, ``edge_attr [1, E*Fe]``).
Every request is checked on its own, so a malformed graph fails only its request; the
good ones run as one batch through ONNX Runtime and each gets its own row back.

The interpreter is Triton's backend stub, not the one that exported the model: it must
find ``edgemp`` (torch-free: numpy + onnxruntime) and numpy 1.x (the stub bundled with
the ``nvidia-pytriton`` wheel mis-sizes outputs under numpy 2). ``edgemp triton serve``
starts the stub in such an environment (``scripts/build_triton_env.sh``).
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from edgemp import ragged_layout as ragged
    from edgemp.errors import EdgempError
    from edgemp.graph import collate
    from edgemp.runtime import load
except ImportError as e:  # the stub's environment, not the user's shell, decides what imports
    raise RuntimeError(
        f"edgemp is not importable by Triton's Python backend stub (interpreter prefix {sys.prefix}): {e}. "
        "Build the backend environment with scripts/build_triton_env.sh and start the server with "
        "`edgemp triton serve`, or set the model's EXECUTION_ENV_PATH to an environment holding edgemp"
    ) from e


def _error(message: str):
    try:  # the code argument arrived in Triton 23.x; older stubs take the message alone
        err = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):
        err = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


class TritonPythonModel:
    """One instance per ``instance_group`` entry; each holds its own ONNX Runtime session."""

    def initialize(self, args):
        if int(np.__version__.split(".")[0]) >= 2:
            raise RuntimeError(
                f"numpy {np.__version__} at {np.__file__}: Triton's bundled Python-backend stub needs numpy<2 "
                "(under numpy 2 every response fails with 'output tensor shape does not match'); "
                "rebuild the backend environment with scripts/build_triton_env.sh"
            )
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        threads = int(config.get("parameters", {}).get("ort_threads", {}).get("string_value", "1") or 1)
        self.model = load(path, providers="cpu", threads=threads)
        if self.model.spec.form != ragged.FORM:
            raise RuntimeError(f"{path} is form {self.model.spec.form!r}; this model.py serves the "
                               f"{ragged.FORM!r} export of `edgemp export triton`")
        m = self.model.spec.model
        self.node_features, self.edge_features = m.node_features, m.edge_features
        self.inputs = [r.name for r in ragged.layout(m.node_features, m.edge_features).ragged]
        self.outputs = list(self.model.output_names)

    def _graph(self, request, index):
        tensors = {}
        for name in self.inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                tensors[name] = t.as_numpy()
        g = ragged.request_to_graph(tensors, self.node_features, self.edge_features)
        return self.model.validate([g])[0]

    def execute(self, requests):
        responses = [None] * len(requests)
        good, graphs = [], []
        for i, request in enumerate(requests):
            try:
                graphs.append(self._graph(request, i))
                good.append(i)
            except EdgempError as e:  # this request's graph only; the rest of the batch still runs
                responses[i] = _error(str(e).removeprefix("graph 0: "))
        if graphs:
            try:
                batch = collate(graphs)
                per_graph = self.model.split(self.model.run_batch(batch), batch)
            except EdgempError as e:
                per_graph = None
                for i in good:
                    responses[i] = _error(f"the batch of {len(graphs)} graphs failed: {e}")
            if per_graph is not None:
                for i, out in zip(good, per_graph):
                    # [1, W]: the request's batch dim (one graph) in front of the graph-level row
                    tensors = [pb_utils.Tensor(n, np.ascontiguousarray(out[n], dtype=np.float32).reshape(1, -1))
                               for n in self.outputs]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.model.close()
