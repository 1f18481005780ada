"""Numerical verification: PyTorch vs ONNX Runtime on graphs the export never saw.

Cases cover the traps: a single one-node graph, a molecule-like batch, 64+ graphs of
mixed sizes, graphs without edges, isolated nodes, duplicate edges (where a lossy
scatter overwrites instead of adding), and all-negative inputs (where a wrong max
aggregation returns 0). A tolerance miss is an error, never a warning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgemp.chem.chemprop_features import PAIRED_EDGE_FAMILIES
from edgemp.data.synthetic import random_graph, with_edge_palette
from edgemp.errors import VerificationError
from edgemp.graph import Graph, GraphBatch
from edgemp.spec import ModelSpec


@dataclass
class CaseResult:
    name: str
    num_graphs: int
    num_nodes: int
    num_edges: int
    max_abs_error: float
    max_rel_error: float
    passed: bool
    # Which side gave NaN/inf ("reference", "candidate" or "both"): the errors above skip those values.
    nonfinite: str = ""


@dataclass
class VerificationReport:
    passed: bool
    atol: float
    rtol: float
    reference: str = "PyTorch"  # what ``compare`` calls expected
    candidate: str = "ONNX Runtime"  # ... and actual
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    cases: list[CaseResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "outputs": self.outputs,
            "cases": [asdict(c) for c in self.cases],
        }

    def require_passed(self, what: str, consequence: str) -> None:
        """Raise :class:`VerificationError` (carrying this report) unless every case passed."""
        if self.passed:
            return
        bad = [c for c in self.cases if not c.passed]
        nan = [c for c in bad if c.nonfinite]
        differ = [c for c in bad if not c.nonfinite]
        parts = [self._nonfinite_message(nan)] if nan else []
        if differ:  # a max error over NaN reads 0.000, so only cases without NaN report one
            worst = max(differ, key=lambda c: c.max_abs_error)
            parts.append(f"{len(differ)} case(s) differ, worst {worst.name}: max_abs_error="
                         f"{worst.max_abs_error:.3e} (tolerance atol={self.atol} rtol={self.rtol})")
        err = VerificationError(f"{what}: {'; '.join(parts)}; {consequence}")
        err.report = self
        raise err

    def _nonfinite_message(self, nan: list[CaseResult]) -> str:
        side = nan[0].nonfinite
        who = f"{self.reference} and {self.candidate} alike" if side == "both" else getattr(self, side)
        return f"outputs are NaN/infinite ({who}) on {len(nan)} case(s), first {nan[0].name}"

    def table(self) -> str:
        rows = ["case                     graphs  nodes  edges   max_abs    max_rel  ok"]
        for c in self.cases:
            rows.append(
                f"{c.name:<24} {c.num_graphs:>6} {c.num_nodes:>6} {c.num_edges:>6} "
                f"{c.max_abs_error:9.2e} {c.max_rel_error:9.2e}  {'yes' if c.passed else 'NO'}"
            )
        for name, err in self.outputs.items():
            rows.append(f"output {name}: max_abs_error={err['max_abs_error']:.3e} max_rel_error={err['max_rel_error']:.3e}")
        return "\n".join(rows)


def _random_graph(rng: np.random.Generator, spec: ModelSpec, n: int, e: int, *, duplicates: bool = False,
                  isolated: int = 0, sign: float = 0.0) -> Graph:
    """The library's random graph sized for ``spec``, bent into one of the edge cases below."""
    g = random_graph(rng, n, e if n - isolated >= 1 else 0, spec.node_features, spec.edge_features,
                     edge_nodes=max(n - isolated, 1))
    ei = g.edge_index
    if duplicates and e >= 4:
        ei = ei.copy()
        ei[:, : e // 2] = ei[:, :1]  # the same edge many times: the same target many times
    if not sign:
        return Graph(x=g.x, edge_index=ei, edge_attr=g.edge_attr)
    ea = None if g.edge_attr is None else (sign * np.abs(g.edge_attr)).astype(np.float32)
    return Graph(x=(sign * np.abs(g.x)).astype(np.float32), edge_index=ei, edge_attr=ea)


def verification_cases(spec: ModelSpec, seed: int = 0, max_nodes: int = 0) -> list[tuple[str, list[Graph]]]:
    """Deterministic unseen batches; node counts capped at ``max_nodes`` for dense models."""
    rng = np.random.default_rng(seed + 12345)
    cap = max_nodes if max_nodes > 0 else 40

    def size(lo: int, hi: int) -> int:
        return int(rng.integers(min(lo, cap), min(hi, cap) + 1))

    def mol() -> Graph:
        n = size(5, 30)
        return _random_graph(rng, spec, n, int(rng.integers(n, 2 * n + 2)))

    # Its own generator, so adding this case left the earlier cases' graphs unchanged.
    palette = np.random.default_rng(seed + 777).standard_normal((6, max(spec.edge_features, 1))).astype(np.float32)
    cases = [
        ("single_node", [_random_graph(rng, spec, 1, 0)]),
        ("molecule_batch", [mol() for _ in range(8)]),
        ("mixed_64", [mol() if i % 7 else _random_graph(rng, spec, size(1, 4), 0) for i in range(67)]),
        ("no_edges", [_random_graph(rng, spec, size(3, 9), 0) for _ in range(3)]),
        ("isolated_nodes", [_random_graph(rng, spec, size(8, 16), 10, isolated=4) for _ in range(4)]),
        ("duplicate_edges", [_random_graph(rng, spec, size(4, 10), 24, duplicates=True) for _ in range(4)]),
        ("all_negative", [_random_graph(rng, spec, size(4, 12), 16, sign=-1.0) for _ in range(4)]),
        ("big_graph", [_random_graph(rng, spec, cap, 3 * cap)]),
        # Few distinct edge-feature rows (bond types): what distinct-row edge networks exploit.
        ("repeated_edge_rows", [with_edge_palette(rng, mol(), palette) for _ in range(16)]),
    ]
    if spec.family.startswith(PAIRED_EDGE_FAMILIES):  # the only layout these models (and the runtime) accept
        cases = [(name, [_reverse_paired(g) for g in graphs]) for name, graphs in cases]
    return cases


def _reverse_paired(g: Graph) -> Graph:
    """Each edge followed by its reverse (edge 2k+1 = edge 2k reversed), as chemprop lays bonds out."""
    ei = np.empty((2, 2 * g.edge_index.shape[1]), np.int64)
    ei[:, 0::2] = g.edge_index
    ei[:, 1::2] = g.edge_index[::-1]
    ea = None if g.edge_attr is None else np.repeat(g.edge_attr, 2, axis=0)
    return Graph(x=g.x, edge_index=ei, edge_attr=ea)


def compare(name: str, batch: GraphBatch, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            atol: float, rtol: float, report: VerificationReport) -> None:
    worst_abs = worst_rel = 0.0
    ok = True
    ref_bad = got_bad = False
    for out_name, ref in expected.items():
        got = actual[out_name]
        if got.shape != ref.shape:
            ok = False
            worst_abs = worst_rel = float("inf")
            continue
        ref_bad = ref_bad or not np.all(np.isfinite(ref))
        got_bad = got_bad or not np.all(np.isfinite(got))
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        abs_err = float(diff.max()) if diff.size else 0.0
        rel_err = float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if diff.size else 0.0
        if not np.all(np.isfinite(got)) or np.any(diff > atol + rtol * np.abs(ref)):
            ok = False
        worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
        agg = report.outputs.setdefault(out_name, {"max_abs_error": 0.0, "max_rel_error": 0.0})
        agg["max_abs_error"] = max(agg["max_abs_error"], abs_err)
        agg["max_rel_error"] = max(agg["max_rel_error"], rel_err)
    nonfinite = {(True, True): "both", (True, False): "reference", (False, True): "candidate"}.get((ref_bad, got_bad), "")
    ok = ok and not nonfinite
    report.cases.append(CaseResult(name, batch.num_graphs, batch.num_nodes, batch.num_edges, worst_abs, worst_rel, ok,
                                   nonfinite))
    report.passed = report.passed and ok

