"""The TensorRT runner: a serialized ``.plan`` engine (TensorRT 10 API, cuda-python buffers).

An engine file carries no edgemp metadata, so the spec travels in a sidecar
``<file>.plan.json`` (``ExportedModelSpec.to_json()``), which this runner offers under ``METADATA_KEY`` in its
:attr:`~edgemp.runtime.runners.base.Runner.metadata`. ``tensorrt`` and ``cuda-python``
are imported only when a ``.plan`` is loaded, so ``import edgemp.runtime`` stays light.
Engines have one execution context here, so calls are serialized with a lock.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgemp.errors import EdgempError, GraphValidationError, MissingExtraError, ModelFormatError
from edgemp.runtime.runners.base import Runner
from edgemp.spec import METADATA_KEY

logger = logging.getLogger(__name__)


def _import_backend() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingExtraError("tensorrt", "tensorrt", "to run .plan engines") from e
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise MissingExtraError("cuda-python", "tensorrt", "to run .plan engines") from e
    return trt, cudart


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


class TensorRTRunner(Runner):
    """A deserialized TensorRT engine with grow-only device buffers per tensor."""

    name = "tensorrt"
    spec_origin = "the sidecar"
    outputs_origin = "the engine"

    def __init__(self, path: str | Path, device_id: int = 0) -> None:
        self.path = path = Path(path)
        side = sidecar_path(path)
        if not side.exists():
            raise ModelFormatError(f"{path}: spec sidecar {side.name} is missing; rebuild the engine with edgemp")
        try:
            self.metadata = {METADATA_KEY: side.read_text(encoding="utf-8")}
        except (OSError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{path}: cannot read spec sidecar {side.name}: {e}") from e
        self._trt, self._cudart = trt, cudart = _import_backend()
        self._call(cudart.cudaSetDevice(device_id))
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ModelFormatError(
                f"{path}: TensorRT could not deserialize the engine (built for another TensorRT version or GPU?)"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self._engine_outputs = self.declared_outputs = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._stream = self._call(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._lock = threading.Lock()
        self.providers = ("TensorRT",)

    def _call(self, result: Any) -> Any:
        """cuda-python returns ``(error, *values)``; raise on error, return the values."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise EdgempError(f"CUDA call failed: {self._cudart.cudaGetErrorName(err)[1].decode()}")
        return values[0] if len(values) == 1 else values

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap or ptr == 0:
            if ptr:
                self._call(self._cudart.cudaFree(ptr))
            cap = max(nbytes, 256, 2 * cap)  # zero-edge tensors still need a valid address
            ptr = int(self._call(self._cudart.cudaMalloc(cap)))
            self._buffers[name] = (ptr, cap)
        return ptr

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx, stream = self._cudart, self._context, self._stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            keep = []  # host arrays must outlive the async copies
            for name in self.input_names:
                arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                keep.append(arr)
                if not ctx.set_input_shape(name, arr.shape):
                    raise GraphValidationError(
                        f"input {name!r} shape {list(arr.shape)} is outside the engine's optimization profile; "
                        "send smaller batches or rebuild the engine with larger max shapes"
                    )
                ptr = self._device(name, arr.nbytes)
                if arr.nbytes:
                    self._call(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, stream))
                ctx.set_tensor_address(name, ptr)
            host: dict[str, np.ndarray] = {}
            for name in self._engine_outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ModelFormatError(f"engine output {name!r} has a data-dependent shape {shape}; not supported")
                host[name] = np.empty(shape, self._dtypes[name])
                ctx.set_tensor_address(name, self._device(name, host[name].nbytes))
            if not ctx.execute_async_v3(stream):
                raise EdgempError("TensorRT execution failed; see the TensorRT log above")
            for name in self.output_names:
                out = host[name]
                if out.nbytes:
                    ptr = self._buffers[name][0]
                    self._call(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, stream))
            self._call(cudart.cudaStreamSynchronize(stream))
            return {n: host[n] for n in self.output_names}

    def close(self) -> None:
        with self._lock:
            for ptr, _ in self._buffers.values():
                self._call(self._cudart.cudaFree(ptr))
            self._buffers.clear()
            if self._stream is not None:
                self._call(self._cudart.cudaStreamDestroy(self._stream))
                self._stream = None
