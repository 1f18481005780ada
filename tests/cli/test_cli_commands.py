"""``edgemp export`` and ``edgemp bench`` as groups: one subcommand per job, old flat spellings still work.

The old spellings are also driven by the tests of each exporter and benchmark (test_export,
test_triton_repo, test_transformers, test_bench); here: the routing itself, --help sizes,
the errors that name the new spelling, and the new spellings run for real.
"""
from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from edgemp.cli.bench_cmds import route_flat_bench
from edgemp.cli.export_cmds import route_flat_export
from edgemp.cli.main import cli
from edgemp.data.synthetic import random_sized_graphs
from edgemp.runtime import load


def _run(args: list[str]):
    return CliRunner().invoke(cli, args, prog_name="edgemp", terminal_width=80)


@pytest.mark.parametrize("group", ["export", "bench"])
def test_every_subcommand_help_fits_a_screen(group):
    cmd = cli.get_command(click.Context(cli), group)
    assert isinstance(cmd, click.Group) and len(cmd.commands) >= 3
    for name in ["", *cmd.commands]:
        res = _run([group, *([name] if name else []), "--help"])
        assert res.exit_code == 0, res.output
        assert len(res.output.splitlines()) <= 40, f"edgemp {group} {name} --help:\n{res.output}"


def test_a_command_imports_only_its_own_module():
    """`edgemp serve` starts without importing the other commands' modules (time to ready)."""
    import subprocess
    import sys

    code = ("import sys; from edgemp.cli.main import cli\n"
            "try: cli(['serve', '--help'], prog_name='edgemp')\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('edgemp.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['edgemp.cli.main', 'edgemp.cli.serve']"
    names = _run(["--help"]).output
    for name in ("bench", "data", "export", "predict", "quantize", "serve", "train", "triton"):
        assert f"  {name} " in names


@pytest.mark.parametrize("args, expected", [
    (["ck", "-o", "m.onnx"], ("graph", ["ck", "-o", "m.onnx"])),
    (["-o", "m.onnx", "--no-verify", "ck"], ("graph", ["-o", "m.onnx", "--no-verify", "ck"])),
    (["--model", "p.m:f", "--weights", "w", "-o", "m.onnx"], ("model", ["p.m:f", "--weights", "w", "-o", "m.onnx"])),
    (["-o", "m.onnx", "--model=p.m:f"], ("model", ["p.m:f", "-o", "m.onnx"])),
    (["ck", "--triton-repo", "r", "--triton-backend", "python"], ("triton", ["ck", "--repo", "r", "--backend", "python"])),
    (["--model", "p.m:f", "--triton-repo=r"], ("triton", ["--model", "p.m:f", "--repo=r"])),
])
def test_flat_export_spellings_route_to_their_subcommand(args, expected):
    assert route_flat_export(args) == expected


def test_a_hugging_face_directory_routes_to_hf(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert route_flat_export([str(tmp_path), "-o", "out"]) == ("hf", [str(tmp_path), "-o", "out"])
    assert route_flat_export(["--opset", "17", str(tmp_path), "-o", "out"])[0] == "hf"


@pytest.mark.parametrize("args, expected", [
    (["m.onnx", "--batch", "1,64"], "graphs"),
    ([], "graphs"),
    (["--url", "http://h:8000", "--model", "gin"], "server"),
    (["--url=http://h:8000", "--model", "gin"], "server"),
    (["minilm/", "--synthetic-lengths", "realistic"], "text"),
    (["minilm/", "--texts", "t.txt"], "text"),
])
def test_flat_bench_spellings_route_to_their_subcommand(args, expected):
    assert route_flat_bench(args) == (expected, args)


@pytest.mark.parametrize("args, names", [
    (["bench", "m.onnx", "--concurrency", "4"], "`edgemp bench server`"),
    (["bench", "graphs", "m.onnx", "--texts", "t.txt"], "`edgemp bench text`"),
    (["export", "ck", "-o", "m.onnx", "--pooling", "mean"], "`edgemp export hf`"),
    (["export", "ck", "-o", "m.onnx", "--name", "g"], "`edgemp export triton`"),
])
def test_an_option_of_another_subcommand_names_it_in_one_line(args, names):
    res = _run(args)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], res.output


def test_new_export_spellings_run_and_match_the_old(make_checkpoint, tmp_path):
    ckpt = str(make_checkpoint("gin"))
    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    assert _run(["export", ckpt, "-o", str(old)]).exit_code == 0
    res = _run(["export", "graph", ckpt, "-o", str(new), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0 and "verification passed" in res.output, res.output
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    graphs = random_sized_graphs(np.random.default_rng(5), 4, node_features=load(old).spec.model.node_features)
    for a, b in zip(load(old).predict(graphs), load(new).predict(graphs)):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    res = _run(["export", "triton", ckpt, "--repo", str(tmp_path / "repo"), "--name", "g", "--backend", "python",
                "--max-batch-size", "4"])
    assert res.exit_code == 0 and "edgemp triton serve" in res.output, res.output
    assert 'backend: "python"' in (tmp_path / "repo" / "g" / "config.pbtxt").read_text()


def test_export_model_subcommand_takes_the_factory_as_its_argument(tmp_path, monkeypatch):
    (tmp_path / "cli_split_models.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    node_features = 4\n"
        "    def __init__(self):\n"
        "        super().__init__(); torch.manual_seed(0); self.lin = torch.nn.Linear(4, 1)\n"
        "    def forward(self, x, edge_index, node_graph, num_graphs):\n"
        "        h = x.index_add(0, edge_index[1], x.index_select(0, edge_index[0]))\n"
        "        return self.lin(h.new_zeros((num_graphs, 4)).index_add(0, node_graph, h))\n"
        "def build():\n    return Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = _run(["export", "model", "cli_split_models:build", "-o", str(tmp_path / "u.onnx"), "--output-name", "y"])
    assert res.exit_code == 0 and "verification passed" in res.output, res.output
    assert [o.name for o in load(tmp_path / "u.onnx").spec.model.outputs] == ["y"]


def test_bench_graphs_subcommand_measures(make_checkpoint, export_checkpoint, tmp_path):
    model = export_checkpoint("gin")
    res = _run(["bench", "graphs", str(model), "--iterations", "5", "--warmup", "1", "--rounds", "1", "--windows", "1",
                "--quiet", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert rows and all(r["status"] == "ok" and r["backend"] == "ort-cpu" for r in rows)


def test_bench_server_subcommand_measures_a_live_server(export_checkpoint, tmp_path):
    from tests.server_utils import start_server

    server = start_server(export_checkpoint("gin"), tmp_path, "--name", "gin")
    try:
        res = _run(["bench", "server", "--url", server.base, "--model", "gin", "--concurrency", "2",
                    "--duration", "0.5", "--warmup-time", "0", "--windows", "1", "--quiet"])
        assert res.exit_code == 0, res.output
        assert "c=2" in res.output
    finally:
        assert server.stop() == 0
