"""Old import path of the TensorRT runner; it lives in :mod:`edgemp.runtime.runners.tensorrt`."""
from edgemp.runtime.runners.tensorrt import TensorRTRunner, sidecar_path

__all__ = ["TensorRTRunner", "sidecar_path"]
