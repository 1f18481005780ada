"""How far a run is from the machine's limit: GEMM FLOPs per call and the same-run sgemm peak.

Message passing on CPU is GEMMs plus gathers and scatters. The FLOPs are read from
ONNX Runtime's own profile of one call (every MatMul/Gemm node with the shapes it really
ran: data-dependent ones such as MPNN's distinct edge rows included), and the peak is a
plain ``MatMul`` of the model's largest GEMM shape timed by the same ONNX Runtime with the
same thread count, in the same run. ``share = FLOPs / latency / peak`` then says how much
of the limit a row reaches, instead of guessing it from another machine's figures.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edgemp.errors import MissingExtraError

logger = logging.getLogger(__name__)

# A·B with A [..., M, K]: K is A's last dim. Gemm (A possibly transposed) is handled apart.
MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"})
GEMM_OPS = MATMUL_OPS | {"Gemm", "FusedGemm"}


@dataclass(frozen=True)
class GemmProfile:
    """The GEMM work of one call: total FLOPs (2·M·K·N summed) and the biggest single GEMM."""

    flops: int
    largest: tuple[int, int, int]  # (M, K, N) of the 2-D GEMM with most FLOPs (batched ones flattened)


def _dims(entry: dict) -> list[int]:
    return [int(d) for d in next(iter(entry.values()))]


# What a benchmark's per-call times count. "wall" is what a caller waits; "cpu" is the process's
# CPU time (all its threads), which other jobs on a shared machine do not inflate by preempting it:
# with one intra-op thread, ORT and torch (eager or compiled) both compute on the calling thread.
CLOCKS: dict[str, Callable[[], int]] = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


def gemm_profile(model_path: str | Path, feeds: Mapping[str, np.ndarray], threads: int = 1) -> GemmProfile:
    """Profile one ``run`` of ``model_path`` on ``feeds`` and sum the FLOPs of its GEMM nodes."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgemp-floor-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        sess.run(None, {k: v for k, v in feeds.items() if k in names})
        events = json.loads(Path(sess.end_profiling()).read_text())
    total, best, best_flops = 0, (0, 0, 0), -1
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        if args.get("op_name") not in GEMM_OPS or not args.get("output_type_shape"):
            continue
        a = _dims(args["input_type_shape"][0])
        out = _dims(args["output_type_shape"][0])
        out_size = int(np.prod(out)) if out else 1
        if out_size == 0:
            continue
        # MatMul: K is A's last dim; Gemm: A may be transposed, but |A| / M is K either way.
        k = a[-1] if args["op_name"] in MATMUL_OPS else int(np.prod(a)) // max(out[0], 1)
        flops = 2 * out_size * k
        total += flops
        if flops > best_flops:
            n = out[-1]
            best, best_flops = (out_size // max(n, 1), k, n), flops
    return GemmProfile(total, best)


class GemmPeak:
    """A chain of plain fp32 ``MatMul`` nodes of one shape in ONNX Runtime: the sgemm rate to compare against.

    A chain of products per call (``a @ B1 @ B2 @ B1 ...`` with ``B1 [K, N]``, ``B2 [N, K]``,
    each ``M·K·N`` multiply-adds) so the per-call cost of ``run`` does not hide the GEMM rate of
    small shapes. Build it once, then call :meth:`sample` inside the benchmark's rounds so the
    peak is measured under the same machine conditions as the rows it is compared with.
    """

    # Products per call: enough for ~MIN_CHAIN_FLOPS of work, so ORT's per-call cost (~10 µs)
    # does not hide a small shape's GEMM rate (a 25x128 @ 128x128 product: 53 GFLOP/s alone,
    # 74 as a pair, 87 as four), and 2 for big shapes, where longer chains measured erratically
    # here (1600x128 @ 128x128: 93 GFLOP/s as a pair, 21 as a chain of 4).
    MIN_CHAIN_FLOPS = 4_000_000
    MAX_CHAIN = 16

    def __init__(self, m: int, k: int, n: int, threads: int = 1, clock: str = "wall", int8: bool = False) -> None:
        import onnxruntime as ort

        try:
            from onnx import TensorProto, helper
        except ImportError as e:
            raise MissingExtraError("onnx", "export", "the GEMM-peak benchmark column") from e
        self.shape = (m, k, n)
        self._clock = CLOCKS[clock]
        per_product = 2 * m * k * n
        self.chain = min(self.MAX_CHAIN, max(2, 2 * -(-self.MIN_CHAIN_FLOPS // (2 * max(per_product, 1)))))
        rng = np.random.default_rng(0)
        b1 = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)  # keeps values O(1) down the chain
        b2 = (rng.standard_normal((n, k)) / np.sqrt(n)).astype(np.float32)
        nodes, prev = [], "a"
        for i in range(self.chain):
            out = "y" if i == self.chain - 1 else f"t{i}"
            nodes.append(helper.make_node("MatMul", [prev, "b1" if i % 2 == 0 else "b2"], [out]))
            prev = out
        last = [m, n] if self.chain % 2 else [m, k]
        graph = helper.make_graph(
            nodes, "sgemm_chain",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, last)],
            [helper.make_tensor("b1", TensorProto.FLOAT, [k, n], b1.ravel().tolist()),
             helper.make_tensor("b2", TensorProto.FLOAT, [n, k], b2.ravel().tolist())],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        self.int8 = int8
        if int8:
            model = _dynamic_int8(model)
        self.op_types = tuple(node.op_type for node in model.graph.node)  # what the peak really runs
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.feeds = {"a": rng.standard_normal((m, k)).astype(np.float32)}
        self.flops = self.chain * per_product
        self.samples_ns: list[int] = []
        for _ in range(3):
            self.session.run(None, self.feeds)

    def sample(self, reps: int = 5) -> None:
        for _ in range(reps):
            t0 = self._clock()
            self.session.run(None, self.feeds)
            self.samples_ns.append(self._clock() - t0)

    @property
    def gflops(self) -> float:
        """GFLOP/s at the median call."""
        return self.flops / float(np.median(self.samples_ns)) if self.samples_ns else float("nan")

    def label(self) -> str:
        m, k, n = self.shape
        return f"{m}x{k} @ {k}x{n}" + (" int8-dynamic" if self.int8 else "")


def _dynamic_int8(model):
    """The same chain through ORT's dynamic quantizer: what edgemp's int8-dynamic GEMMs run.

    Each product becomes DynamicQuantizeMatMul (activation range, u8 quantization and the u8 x s8
    VNNI GEMM per call), so the int8 rows compare with int8 work done the same way, not with fp32.
    """
    import onnx

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:  # onnxruntime builds without the quantization tools
        raise MissingExtraError("onnxruntime.quantization", "export", "the int8 GEMM peak") from e

    with tempfile.TemporaryDirectory(prefix="edgemp-floor-int8-") as tmp:
        src, dst = os.path.join(tmp, "chain.onnx"), os.path.join(tmp, "chain_int8.onnx")
        onnx.save(model, src)
        root = logging.getLogger()
        was = root.disabled
        root.disabled = True  # the quantizer logs a pre-processing hint through the root logger on every call
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        finally:
            root.disabled = was
        return onnx.load(dst)


def share_of_peak(flops: int, latency_ns: float, peak_gflops: float) -> float:
    """Fraction of the sgemm peak a call reaches: (FLOPs / latency) / peak."""
    return (flops / latency_ns) / peak_gflops if latency_ns > 0 and peak_gflops > 0 else float("nan")


def torch_gemm_flops(model, batch) -> int:
    """GEMM FLOPs of one eager forward of a GraphNet on a collated ``batch`` (torch's FLOP counter).

    What PyTorch eager and torch.compile compute: the model as written, before any export fold,
    so a peer's share of the same-run peak reads from its own work. Counts matmul-family ops
    (mm, addmm, bmm, ...) as 2·M·K·N, like :func:`gemm_profile` does for ONNX Runtime.
    """
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError as e:
        raise MissingExtraError("torch", "export", "counting a PyTorch peer's FLOPs") from e

    t = {k: torch.from_numpy(v) for k, v in batch.tensors().items()}
    edge_attr = t.get("edge_attr") if getattr(model.cfg, "uses_edge_features", False) else None
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(t["x"], t["edge_index"], edge_attr, t["node_graph"], batch.num_graphs)
    return int(counter.get_total_flops())
