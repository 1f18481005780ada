"""Checkpoint → a verified Triton model repository that dynamically batches graphs.

Writes::

    DIR/NAME/config.pbtxt        platform onnxruntime_onnx, ragged inputs, batch inputs,
                                 dynamic batching, instance groups, optional TensorRT EP
    DIR/NAME/config.json         the same batch budget for ``edgemp serve DIR``
    DIR/NAME/<version>/model.onnx  the Triton-ragged model (form "triton-ragged")
    DIR/NAME/<version>/model.py    --triton-backend python only: Triton's Python backend
                                   runs the ONNX file with edgemp.runtime (triton_python/model.py)

The ONNX model takes one graph per request in the flat layout of
:mod:`edgemp.ragged_layout` and rebuilds node offsets and graph ids in-graph
(:class:`edgemp.export.wrappers.TritonRaggedExport`). Before anything is written the
export is verified the way Triton will run it: requests are batched with a numpy
reproduction of Triton's ragged batching, run in ONNX Runtime, and every request's row
must equal the plain model's output for that graph alone. A miss is an error.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemp import __version__, ragged_layout as ragged
from edgemp.data.synthetic import random_graph
from edgemp.errors import ExportError, MissingExtraError
from edgemp.export.config import ExportConfig
from edgemp.export.deps import require_torch_export
from edgemp.export.onnx_export import finish_graph, torch_export
from edgemp.export.onnx_file import staged_path, write_metadata
from edgemp.export.source import ExportSource, resolve_source
from edgemp.export.triton_config import TritonRepoConfig, check_config, declared_inputs, render_config
from edgemp.export.verify import VerificationReport, compare, verification_cases
from edgemp.graph import Graph, collate
from edgemp.spec import ExportedModelSpec

log = logging.getLogger(__name__)

PYTHON_MODEL_TEMPLATE = Path(__file__).parent / "triton_python" / "model.py"


@dataclass
class TritonRepoResult:
    """Where things went, and the evidence."""

    model_dir: Path
    onnx_path: Path
    config_path: Path
    spec: ExportedModelSpec
    report: VerificationReport | None
    checks: dict

    def to_dict(self) -> dict:
        d = {"model_dir": str(self.model_dir), "onnx": str(self.onnx_path), "config": str(self.config_path),
             "checks": self.checks, "passed": self.report.passed if self.report else None}
        if self.report:
            d.update(self.report.to_dict())
        return d


def _refuse_node_level(src: ExportSource) -> None:
    node = [o.name for o in src.spec.outputs if o.level != "graph"]
    if node or src.spec.task.startswith("node_"):
        raise ExportError(
            f"task {src.spec.task!r} has node-level output(s) {node}: Triton splits outputs one row per request, "
            "so only graph-level tasks export to a Triton repository; export the sparse form and use edgemp serve"
        )


def _example(src: ExportSource):
    """3 graphs (2, 3, 2 nodes; 5, 4, 3 edges): all sizes distinct and > 1, so none is specialised."""
    import torch

    gen = torch.Generator().manual_seed(0)
    f, fe = src.spec.node_features, src.spec.edge_features
    nodes, edges = [2, 3, 2], [5, 4, 3]
    x = torch.randn(sum(nodes) * f, generator=gen)
    pairs = torch.cat([torch.randint(0, n, (e, 2), generator=gen) for n, e in zip(nodes, edges)]).reshape(-1)
    args = [x, pairs]
    if fe:
        args.append(torch.randn(sum(edges) * fe, generator=gen))
    node_acc = torch.tensor([0] + list(np.cumsum(nodes) * f), dtype=torch.int32)
    edge_acc = torch.tensor([0] + list(np.cumsum(edges) * 2), dtype=torch.int32)
    return tuple(args + [node_acc, edge_acc])


# Ragged inputs are 1-D; both offsets have G + 1 entries: one named dim, so the output's batch dim is G.
RAGGED_AXES = {"x": {0: "x_elements"}, "edge_index": {0: "edge_elements"}, "edge_attr": {0: "edge_attr_elements"},
               ragged.X_OFFSETS: {0: "batch_plus_one"}, ragged.EDGE_OFFSETS: {0: "batch_plus_one"}}


def _require_triton_shapes(model, output_names) -> dict:
    """Triton's ORT backend loads a ragged input only if the ONNX input is 1-D ``[-1]``."""
    shapes = {}
    for i in model.graph.input:
        dims = i.type.tensor_type.shape.dim
        if len(dims) != 1 or dims[0].HasField("dim_value"):
            raise ExportError(f"ONNX input {i.name!r} must be 1-D and dynamic for Triton ragged batching, got {dims}")
        shapes[i.name] = [dims[0].dim_param]
    for o in model.graph.output:
        dims = o.type.tensor_type.shape.dim
        if len(dims) != 2 or dims[0].HasField("dim_value") or not dims[1].HasField("dim_value"):
            raise ExportError(f"ONNX output {o.name!r} must be [batch, width] with a static width, got {dims}")
        shapes[o.name] = [dims[0].dim_param, dims[1].dim_value]
    if [o.name for o in model.graph.output] != list(output_names):
        raise ExportError(f"ONNX outputs {[o.name for o in model.graph.output]} != {list(output_names)}")
    return shapes


def _alone(src: ExportSource, g: Graph) -> dict[str, np.ndarray]:
    """The plain (sparse, PyTorch) model's output for one graph run by itself."""
    import torch

    from edgemp.export.wrappers import outputs_as_tuple

    kwargs = {"x": torch.from_numpy(g.x), "edge_index": torch.from_numpy(g.edge_index),
              "node_graph": torch.zeros(g.num_nodes, dtype=torch.int64), "num_graphs": 1}
    if src.spec.edge_features:
        kwargs["edge_attr"] = torch.from_numpy(g.edge_attr)
    names = tuple(o.name for o in src.spec.outputs)
    with torch.no_grad():
        outs = outputs_as_tuple(src.module(**kwargs), names)
    return {n: o.numpy() for n, o in zip(names, outs)}


def random_mixes(spec, count: int, max_requests: int, seed: int) -> list[list[Graph]]:
    """``count`` batches of 1..``max_requests`` graphs of different sizes (some edgeless)."""
    rng = np.random.default_rng(seed + 777)
    mixes = []
    for _ in range(count):
        k = int(rng.integers(1, max_requests + 1))
        graphs = []
        for _ in range(k):
            n = int(rng.integers(1, 41))
            e = 0 if rng.random() < 0.15 else int(rng.integers(0, 3 * n + 1))
            graphs.append(random_graph(rng, n, e, spec.node_features, spec.edge_features))
        mixes.append(graphs)
    return mixes


@contextlib.contextmanager
def _one_torch_thread():
    """Hundreds of one-graph forwards: torch's intra-op pool costs ~1000x the work itself here
    (measured: index_add on a 20-node graph 6 ms with 2 threads, 8 µs with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def verify_ragged(src: ExportSource, path: Path, repo_cfg: TritonRepoConfig, cfg: ExportConfig) -> VerificationReport:
    """Batch requests as Triton would, run the ONNX file in ORT, compare each row to the graph alone."""
    with _one_torch_thread():
        return _verify_ragged(src, path, repo_cfg, cfg)


def _verify_ragged(src: ExportSource, path: Path, repo_cfg: TritonRepoConfig, cfg: ExportConfig) -> VerificationReport:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = src.spec
    lay = ragged.layout(spec.node_features, spec.edge_features)
    names = [o.name for o in spec.outputs]
    report = VerificationReport(passed=True, atol=cfg.atol, rtol=cfg.rtol)
    b = repo_cfg.max_batch_size
    cases = []
    for name, graphs in verification_cases(spec, cfg.seed):
        # Triton never forms a batch larger than max_batch_size requests.
        for start in range(0, len(graphs), b):
            suffix = f"[{start // b}]" if len(graphs) > b else ""
            cases.append((name + suffix, graphs[start:start + b]))
    for i, graphs in enumerate(random_mixes(spec, repo_cfg.verify_mixes, min(16, b), cfg.seed)):
        cases.append((f"triton_mix_{i}", graphs))
    for name, graphs in cases:
        requests = [ragged.graph_to_request(g, spec.edge_features) for g in graphs]
        feeds = ragged.triton_batch(requests, lay)
        got = dict(zip(names, sess.run(names, feeds)))
        per_request = ragged.split_outputs(got, [1] * len(requests))
        alone = [_alone(src, g) for g in graphs]
        expected = {n: np.concatenate([a[n] for a in alone]) for n in names}
        actual = {n: np.concatenate([r[n] for r in per_request]) for n in names}
        compare(name, collate(graphs), expected, actual, cfg.atol, cfg.rtol, report)
    return report


def _write_config(text: str, path: Path, input_names, output_names) -> bool:
    """Write config.pbtxt; returns whether it was checked against Triton's protobuf schema."""
    try:
        check_config(text, tuple(input_names), tuple(output_names))
        checked = True
    except MissingExtraError as e:
        log.warning("config.pbtxt written but not checked against Triton's schema: %s", e)
        checked = False
    path.write_text(text, encoding="utf-8")
    return checked


def _model_dir(repo: str | Path, name: str) -> Path:
    """``repo/<name>``, refused unless it resolves to a folder inside ``repo``: the export writes
    and, on failure, deletes there, so a name or symlink leading elsewhere must stop it first."""
    root = Path(repo).resolve()
    resolved = (root / name).resolve()
    if resolved.parent != root:
        raise ExportError(f"model folder {Path(repo) / name} resolves to {resolved}, outside the repository {root}")
    return Path(repo) / name


def export_triton_repo(model_or_checkpoint, repo: str | Path, repo_cfg: TritonRepoConfig = TritonRepoConfig(),
                       cfg: ExportConfig = ExportConfig()) -> TritonRepoResult:
    """Export, check and verify a Triton-ragged model; write ``repo/<name>/``. Raises on any failed check."""
    require_torch_export("Triton repository export")
    import onnx

    if cfg.form != "sparse":
        raise ExportError(f"a Triton repository holds the ragged form of the sparse model; --form {cfg.form} does not apply")
    model_dir = _model_dir(repo, repo_cfg.name)
    src = resolve_source(model_or_checkpoint)
    _refuse_node_level(src)
    if hasattr(src.module, "set_scatter_impl"):  # GraphNet and the chemprop D-MPNN
        src.module.set_scatter_impl(cfg.scatter_impl)
    spec_m = src.spec
    lay = ragged.layout(spec_m.node_features, spec_m.edge_features)
    input_names, output_names = lay.input_names, tuple(o.name for o in spec_m.outputs)
    model = _trace_ragged(src, lay, cfg)
    checks = finish_graph(model, src, cfg)
    io_shapes = _require_triton_shapes(model, output_names)

    triton_info = {
        "name": repo_cfg.name, "backend": repo_cfg.backend, "max_batch_size": repo_cfg.max_batch_size,
        "ragged_inputs": [r.name for r in lay.ragged],
        "batch_inputs": {b.target_name: [b.kind, b.source_input] for b in lay.batch_inputs},
    }
    spec = ExportedModelSpec(
        model=spec_m, input_names=tuple(input_names), form=ragged.FORM, target=cfg.target, precision="fp32",
        opset=cfg.opset, checkpoint_sha256=src.checkpoint_sha256, edgemp_version=__version__,
        extra={"triton": triton_info},
    )
    write_metadata(model, spec)

    version_dir = model_dir / str(repo_cfg.version)
    fresh = not model_dir.exists()
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / "model.onnx"
    report = None
    try:
        with staged_path(onnx_path) as staged:
            onnx.save(model, str(staged))
            if cfg.verify:
                report = verify_ragged(src, staged, repo_cfg, cfg)
                report.require_passed("the Triton-ragged model disagrees with the plain model",
                                      "the repository was not written")
        if repo_cfg.backend == "python":
            shutil.copyfile(PYTHON_MODEL_TEMPLATE, version_dir / "model.py")
    except BaseException:
        if fresh:  # leave no half-written model folder for Triton or edgemp serve to trip on
            shutil.rmtree(model_dir, ignore_errors=True)
        raise

    config_path = model_dir / "config.pbtxt"
    checked = _write_serving_configs(model_dir, repo_cfg, spec_m, lay, output_names)
    checks.update(io_shapes=io_shapes, config_schema_checked=checked)
    log.info("wrote Triton repository model %s (%s)", model_dir, "verified" if report else "not verified")
    return TritonRepoResult(model_dir, onnx_path, config_path, spec, report, checks)


def _trace_ragged(src, lay, cfg: ExportConfig):
    """The source module wrapped for ragged batching, exported to an ``onnx.ModelProto``."""
    import onnx

    from edgemp.export.wrappers import triton_ragged_export

    spec_m = src.spec
    output_names = tuple(o.name for o in spec_m.outputs)
    wrapper = triton_ragged_export(src.module, output_names, spec_m.node_features, spec_m.edge_features,
                                   cfg.scatter_impl).eval()
    if wrapper.input_names() != lay.input_names:  # a bug, not a user error
        raise ExportError(f"wrapper inputs {wrapper.input_names()} disagree with the ragged layout {lay.input_names}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch_export(wrapper, _example(src), lay.input_names, output_names, cfg.opset, raw, RAGGED_AXES)
        return onnx.load(str(raw))


def _write_serving_configs(model_dir: Path, repo_cfg: TritonRepoConfig, spec_m, lay,
                           output_names: tuple[str, ...]) -> bool:
    """config.pbtxt for Triton and config.json (the same batch budget) for edgemp serve; True if schema-checked."""
    checked = _write_config(render_config(repo_cfg, spec_m, lay), model_dir / "config.pbtxt",
                            declared_inputs(repo_cfg, lay), output_names)
    batch = {"max_batch_graphs": repo_cfg.max_batch_size, "max_queue_delay_us": repo_cfg.max_queue_delay_us}
    if repo_cfg.max_queue_size:  # Triton's 0 = unbounded; edgemp serve keeps its own default then
        batch["max_queue_size"] = repo_cfg.max_queue_size
    (model_dir / "config.json").write_text(json.dumps(batch, indent=2) + "\n", encoding="utf-8")
    return checked

