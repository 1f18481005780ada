"""Load an exported edgemp model and run graphs through it.

:class:`Model` is the graph input layout over a backend :class:`~edgemp.runtime.runners.base.Runner`:
it validates graphs against the model's spec (so a bad graph fails with its index and
field instead of an opaque ORT shape error), collates, runs once and splits the batched
outputs back per graph. The same code path serves ``predict`` (one caller) and the
dynamic batcher (many callers, via :meth:`Model.run_batch`).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgemp import dense_layout as dense, ragged_layout as ragged
from edgemp.chem.chemprop_features import PAIRED_EDGE_FAMILIES, require_reverse_pairs
from edgemp.errors import GraphValidationError, ModelFormatError, clipped
from edgemp.graph import Graph, GraphBatch, collate_valid, validate_graph
from edgemp.runtime.batch_outputs import BatchSlice
from edgemp.runtime.runners import InputLayout, Runner, RunnerOptions, open_runner
from edgemp.spec import ExportedModelSpec, spec_from_metadata

if TYPE_CHECKING:
    from edgemp.runtime.text import TextModel

logger = logging.getLogger(__name__)

# Inputs each form may declare (a model may drop some, e.g. an unused edge_attr).
FORM_INPUTS: dict[str, frozenset[str]] = {
    "sparse": frozenset({"x", "edge_index", "edge_attr", "node_graph", "graph_node_counts"}),
    "dense": frozenset({"x", "adjacency", "node_mask"}),
    ragged.FORM: frozenset({"x", "edge_index", "edge_attr", ragged.X_OFFSETS, ragged.EDGE_OFFSETS}),
}


MAX_WIDTH = 1 << 20  # features / output width: far past any real model, far below overflow
MAX_DENSE_NODES = 1 << 16


class Model(InputLayout):
    """An exported model ready to run; build it with :func:`load`."""

    def __init__(self, runner: Runner, path: Path | None = None) -> None:
        self.runner = runner
        self.path = path
        self.spec: ExportedModelSpec = read_spec(runner)
        runner.fetch([o.name for o in self.spec.model.outputs])
        self._levels = self.spec.model.output_levels
        self._paired_edges = self.spec.model.family.startswith(PAIRED_EDGE_FAMILIES)  # chemprop D-MPNN
        self._check_contract()
        # run_one's shortcut: sparse models (their inputs are what a one-graph batch holds), no pair checks
        self._runs_one = self.spec.form == "sparse" and not self._paired_edges
        self._one_outputs = tuple((o.name, o.width, o.level == "node") for o in self.spec.model.outputs)

    # -- what the model is (inputs, providers and lifetime: InputLayout) ----------------
    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.spec.model.outputs)

    def _check_metadata(self) -> None:
        """Impossible metadata (no outputs, widths that are not small positive integers) is one
        error line at load, not a traceback at warm-up or a 200 with empty outputs later."""
        spec, where, m = self.spec, self.path or "model", self.spec.model

        def count(value: object, lo: int, hi: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi

        if not m.outputs:
            raise ModelFormatError(f"{where}: metadata declares no outputs; re-export the model")
        if not count(m.node_features, 1, MAX_WIDTH):
            raise ModelFormatError(f"{where}: metadata node_features={m.node_features!r} is not in 1..{MAX_WIDTH}")
        if not count(m.edge_features, 0, MAX_WIDTH):
            raise ModelFormatError(f"{where}: metadata edge_features={m.edge_features!r} is not in 0..{MAX_WIDTH}")
        names = [o.name for o in m.outputs]
        for o in m.outputs:
            if not isinstance(o.name, str) or not o.name or o.level not in ("graph", "node") \
                    or not count(o.width, 1, MAX_WIDTH):
                raise ModelFormatError(
                    f"{where}: metadata output {clipped(o.name)!r} needs a name, level 'graph' or 'node' "
                    f"and a width in 1..{MAX_WIDTH}; got level={clipped(o.level, 16)!r} width={clipped(o.width, 16)!r}")
        if len(set(names)) != len(names):
            raise ModelFormatError(f"{where}: metadata lists an output twice: {names}")
        if spec.form == "dense" and not count(spec.max_nodes, 1, MAX_DENSE_NODES):
            raise ModelFormatError(f"{where}: dense model metadata has max_nodes={spec.max_nodes!r}; "
                                   f"expected 1..{MAX_DENSE_NODES}; re-export it")

    def _check_contract(self) -> None:
        self._check_metadata()
        spec, where = self.spec, self.path or "model"
        allowed = FORM_INPUTS[spec.form]
        unknown = [n for n in self.input_names if n not in allowed]
        if unknown:
            raise ModelFormatError(f"{where}: input(s) {unknown} are not part of the edgemp {spec.form} contract")
        if spec.form == "dense" and spec.max_nodes <= 0:
            raise ModelFormatError(f"{where}: dense model metadata has max_nodes={spec.max_nodes}; re-export it")
        if spec.form == ragged.FORM:
            node_level = [o.name for o in spec.model.outputs if o.level != "graph"]
            if node_level:
                # Triton splits outputs by request batch size (one row per graph): node rows cannot be split.
                raise ModelFormatError(
                    f"{where}: triton-ragged models answer one row per graph but output(s) {node_level} "
                    "are node-level; serve the sparse export instead"
                )
        if "edge_attr" in self.input_names and spec.model.edge_features <= 0:
            raise ModelFormatError(f"{where}: model takes edge_attr but its metadata says edge_features=0")
        self._check_shapes()

    def _check_shapes(self) -> None:
        """The graph's own static shapes against the metadata: a model whose metadata was edited
        or belongs to another export fails here with one line, not later with an ONNX Runtime
        traceback (inputs) or silently with rows of the wrong width (outputs)."""
        spec, where, m = self.spec, self.path or "model", self.spec.model
        inputs, outputs = self.runner.input_shapes, self.runner.output_shapes
        for name, width in (("x", m.node_features), ("edge_attr", m.edge_features)):
            dims = inputs.get(name)
            if dims and dims[-1] is not None and dims[-1] != width:
                raise ModelFormatError(f"{where}: input {name!r} takes {dims[-1]} features per row but the "
                                       f"metadata says {width}; the metadata does not describe this graph")
        for o in m.outputs:
            dims = outputs.get(o.name)
            if dims is None:
                continue
            rank = 3 if spec.form == "dense" and o.level == "node" else 2  # dense node rows: [G, M, W]
            if len(dims) != rank:
                raise ModelFormatError(f"{where}: output {o.name!r} has rank {len(dims)}; a {o.level}-level output "
                                       f"of a {spec.form} model has rank {rank} (rows, then {o.width} per row)")
            if dims[-1] is not None and dims[-1] != o.width:
                raise ModelFormatError(f"{where}: output {o.name!r} is {dims[-1]} wide but the metadata says "
                                       f"{o.width}; the metadata does not describe this graph")

    # -- graphs in, outputs out ---------------------------------------------------------
    def _conform(self, g: Graph) -> Graph:
        """Drop edge_attr the model ignores; give edgeless graphs a [0, Fe] edge_attr."""
        fe = self.spec.model.edge_features
        if fe <= 0:
            return g if g.edge_attr is None else dataclasses.replace(g, edge_attr=None)
        ei, ea = g.edge_index, g.edge_attr
        edgeless = isinstance(ei, np.ndarray) and ei.ndim == 2 and ei.shape[1] == 0
        if edgeless and (ea is None or (isinstance(ea, np.ndarray) and ea.size == 0 and ea.shape != (0, fe))):
            return dataclasses.replace(g, edge_attr=np.zeros((0, fe), np.float32))
        return g

    def validate(self, graphs: Sequence[Graph]) -> list[Graph]:
        """Check every graph against the spec; returns the graphs as they will be fed.

        Raises :class:`GraphValidationError` naming the first bad graph's index and field.
        """
        return self._validated(graphs, want_batch=False)[0]

    def validated_batch(self, graphs: Sequence[Graph]) -> tuple[list[Graph], GraphBatch | None]:
        """The graphs as they will be fed, and their batch (None for none): :meth:`validate`
        and :func:`~edgemp.graph.collate` in one pass, the values checked once over the batch.

        Raises :class:`GraphValidationError` naming the first bad graph's index and field.
        """
        return self._validated(graphs, want_batch=True)

    def _validated(self, graphs: Sequence[Graph], want_batch: bool = True) -> tuple[list[Graph], GraphBatch | None]:
        """The conformed graphs and their batch (None for no graphs, or one graph when not wanted).

        Checked once over the concatenated batch (:func:`edgemp.graph.collate_valid`).

        A failure re-checks graph by graph (:meth:`_check_each`), so the error is the one the
        first bad graph gives, whichever check the batch-wide pass tripped on.
        """
        if isinstance(graphs, Graph):
            raise GraphValidationError("expected a list of graphs, got a single Graph; wrap it in a list")
        out = []
        for i, g in enumerate(graphs):
            if not isinstance(g, Graph):
                raise GraphValidationError(f"graph {i}: expected an edgemp Graph, got {type(g).__name__}")
            out.append(self._conform(g))
        if not out:
            return out, None
        if len(out) == 1 and not want_batch:  # the server's one-graph requests: nothing to concatenate
            self._check_each(out)
            return out, None
        m = self.spec.model
        try:
            batch = collate_valid(out, node_features=m.node_features, edge_features=m.edge_features,
                                  max_nodes=self.spec.max_nodes if self.spec.form == "dense" else None)
            if self._paired_edges:
                for i, g in enumerate(out):
                    require_reverse_pairs(g, i)
        except GraphValidationError:
            self._check_each(out)
            raise
        return out, batch

    def _check_each(self, graphs: list[Graph]) -> None:
        """All checks graph by graph, in order: raises the first bad graph's error."""
        m = self.spec.model
        max_nodes = self.spec.max_nodes if self.spec.form == "dense" else None
        for i, g in enumerate(graphs):
            validate_graph(g, i, node_features=m.node_features, edge_features=m.edge_features, max_nodes=max_nodes)
            if self._paired_edges:
                require_reverse_pairs(g, i)

    def feeds(self, batch: GraphBatch) -> dict[str, np.ndarray]:
        """The batch in this model's input form (sparse tensors, padded dense ones, or Triton-ragged)."""
        if self.spec.form == "dense":
            return dense.to_dense(batch, self.spec.max_nodes)
        if self.spec.form == ragged.FORM:
            m = self.spec.model
            return ragged.feeds_from_batch(batch, m.node_features, m.edge_features)
        return batch.tensors()

    def run_batch(self, batch: GraphBatch) -> dict[str, np.ndarray]:
        """Run an already-collated batch of *validated* graphs.

        Outputs are in batch layout whatever the form: graph-level ``[G, W]``, node-level
        ``[N, W]`` — ready for :func:`edgemp.graph.split`.
        """
        if self.spec.form == "dense":
            groups = dense.groups_within_cap(batch, self.spec.max_nodes)  # one, unless too large padded as one
            parts = []
            for a, b in groups:
                part = batch if len(groups) == 1 else dense.graph_range(batch, a, b)
                parts.append(dense.from_dense(self.runner.infer(self.feeds(part)), part, self._levels))
            outputs = parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        else:
            outputs = self.runner.infer(self.feeds(batch))
        for o in self.spec.model.outputs:  # widths a graph leaves symbolic are checked as they come
            value = outputs[o.name]
            if value.ndim != 2 or value.shape[1] != o.width:
                raise ModelFormatError(f"{self.path or 'model'}: output {o.name!r} came back with shape "
                                       f"{list(value.shape)}; its metadata says [rows, {o.width}]")
        return outputs

    def run_one(self, g: Graph) -> BatchSlice | None:
        """One graph validated, run and split as ``split(run_batch(batch))`` of its validated batch
        would give it, in fewer steps; None where any check would not pass: the general path then
        runs it and names what is wrong (nothing ran, unless the model's outputs broke its metadata).

        The lone request's path (:meth:`Batcher.run_now`). After a model call the CPU's caches
        hold the model, not the Python around it, so each object the general path builds
        (conformed graph, batch, offsets) costs several times its warm price: validate, collate
        and split took ~38 µs around a 23-atom MPNN's 200 µs run, this ~10 µs
        (benchmarks/results/server.md §0m). Sparse models only: the others take the general path.
        """
        if not self._runs_one:
            return None
        m = self.spec.model
        x, ei, ea = g.x, g.edge_index, g.edge_attr
        if type(x) is not np.ndarray or x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous \
                or type(ei) is not np.ndarray or ei.dtype != np.int64 or ei.ndim != 2 or not ei.flags.c_contiguous:
            return None
        n, e = x.shape[0], ei.shape[1]
        if n == 0 or x.shape[1] != m.node_features or ei.shape[0] != 2 or not np.isfinite(x).all():
            return None
        if e and (ei.min() < 0 or ei.max() >= n):
            return None
        feeds = {"x": x, "edge_index": ei, "node_graph": np.zeros(n, np.int64),
                 "graph_node_counts": np.array([n], np.int64)}
        if m.edge_features > 0:
            if type(ea) is not np.ndarray or ea.dtype != np.float32 or ea.shape != (e, m.edge_features) \
                    or not ea.flags.c_contiguous or not np.isfinite(ea).all():
                return None
            feeds["edge_attr"] = ea
        outputs = self.runner.infer(feeds)
        for name, width, node_level in self._one_outputs:
            value = outputs[name]
            if value.ndim != 2 or value.shape[1] != width or value.shape[0] != (n if node_level else 1):
                return None  # the general path names it (a model that breaks its own metadata)
        return BatchSlice(outputs, self._levels, np.array([0, n], np.int64), 0, 1)

    def split(self, outputs: dict[str, np.ndarray], batch: GraphBatch) -> BatchSlice:
        """Per-graph outputs as a sequence of dicts that slices without copying (the batcher's form)."""
        return BatchSlice.of(outputs, batch, self._levels)

    def predict(self, graphs: Sequence[Graph]) -> list[dict[str, np.ndarray]]:
        """One output dict per graph, in order; the graphs run as one batch.

        Not chunked: on the 2-core box, 128 to 4096 graphs per run gave the same graphs/s
        within noise (sparse and dense), so one run keeps the call simple.
        """
        _, batch = self._validated(graphs)
        if batch is None:
            return []
        return self.split(self.run_batch(batch), batch).dicts()

    def __repr__(self) -> str:
        return f"Model({self.path}, form={self.spec.form}, providers={list(self.providers)})"


def load(
    path: str | Path,
    providers: str | Sequence[str] = "auto",
    threads: int | None = None,
    *,
    allow_spinning: bool = False,
) -> "Model | TextModel":
    """Load an exported ``.onnx`` (or a TensorRT ``.plan`` with its ``.plan.json`` sidecar).

    A text model directory (``model.onnx`` + ``tokenizer.json``) returns a
    :class:`edgemp.runtime.text.TextModel` instead.

    Args:
        providers: ``auto`` (TensorRT > CUDA > CPU, whatever is installed), ``cpu``,
            ``cuda``, ``tensorrt``, or a list of ORT provider names. Ignored for ``.plan``.
        threads: ORT intra-op threads (default 1: measured fastest per core on small
            graphs, see :data:`edgemp.runtime.runners.onnxruntime.DEFAULT_THREADS`); 0 = ORT's default.
        allow_spinning: let idle ORT pool threads spin (lower latency, burns a core).
    """
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"model file {p} does not exist")
    from edgemp.runtime import text  # light: onnxruntime + numpy; `tokenizers` loads only for a text model

    if text.text_model_files(p) is not None:  # a text model dir (model.onnx + tokenizer.json)
        return text.load_text_model(p, providers, threads, allow_spinning=allow_spinning)  # type: ignore[return-value]
    if p.is_dir():
        raise ModelFormatError(f"{p} is a directory; pass the exported .onnx (or .plan) file")
    runner = open_runner(p, RunnerOptions(providers, threads, allow_spinning))
    try:
        model = Model(runner, p)
    except BaseException:
        runner.close()  # a model that fails its checks must not keep device memory
        raise
    if threads is not None and threads > 1 and model.spec.target == "ort-cpu" and model.spec.form == "sparse" \
            and model.providers[:1] == ("CPUExecutionProvider",):
        # Measured here (ORT 1.32): ScatterND(add) run by several intra-op threads races on
        # repeated indices, so large batches came out wrong (a chemprop D-MPNN over 64 molecules
        # was off by up to 0.5). One thread is also the fastest setting for graphs this size.
        logger.warning("%s: sparse ORT-CPU models run with 1 intra-op thread (asked for %d): ONNX Runtime's "
                       "multi-threaded ScatterND(add) gives wrong sums on repeated indices", p, threads)
        model.close()
        return load(p, providers, 1, allow_spinning=allow_spinning)
    return model


def read_spec(runner: Runner) -> ExportedModelSpec:
    """The graph model's ExportedModelSpec from the runner's edgemp metadata."""
    return spec_from_metadata(runner.metadata, runner.path)
