"""The one ONNX-file module of export, and the one spec parser runtime and export share.

Real files, real ONNX Runtime sessions: the export side (onnx protos) and the runtime side
(session metadata) must read the same spec and fail with the same message.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")

import edgemp.runtime as rt  # noqa: E402
from edgemp.errors import ModelFormatError  # noqa: E402
from edgemp.export.onnx_file import (  # noqa: E402
    load_edgemp_model,
    load_onnx,
    save_onnx,
    staged_path,
    with_precision,
    write_bytes_atomic,
    write_metadata,
)
from edgemp.spec import METADATA_KEY, spec_from_metadata  # noqa: E402
from runtime_fixtures import build_plain_onnx, build_sparse_model  # noqa: E402


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_staged_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError, match="check failed"):
        with staged_path(target) as staged:
            staged.write_bytes(b"half-checked")
            assert staged.parent == target.parent and staged.name.startswith(".")
            raise RuntimeError("check failed")
    assert target.read_bytes() == b"good" and _leftovers(tmp_path) == []
    with staged_path(target) as staged:
        staged.write_bytes(b"better")
        assert target.read_bytes() == b"good"  # readers see the old file until the rename
    assert target.read_bytes() == b"better" and _leftovers(tmp_path) == []
    write_bytes_atomic(tmp_path / "new.plan", b"\x01\x02")
    assert (tmp_path / "new.plan").read_bytes() == b"\x01\x02" and _leftovers(tmp_path) == []


def test_metadata_roundtrip_and_runtime_reads_the_same_spec(tmp_path):
    src = build_sparse_model(tmp_path / "src.onnx")
    model, spec = load_edgemp_model(src)
    q_spec = with_precision(spec, "fp16", {"note": {"k": 1}})
    write_metadata(model, q_spec)
    write_metadata(model, q_spec)  # replaces, never duplicates, the edgemp entry
    assert [p.key for p in model.metadata_props].count(METADATA_KEY) == 1
    out = save_onnx(model, tmp_path / "out.onnx")
    _, read_back = load_edgemp_model(out)
    assert read_back == q_spec and read_back.precision == "fp16" and read_back.extra["note"] == {"k": 1}
    assert rt.load(out, providers="cpu").spec == q_spec
    assert _leftovers(tmp_path) == []


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all")
    with pytest.raises(ModelFormatError, match="garbage.onnx is not a readable ONNX file"):
        load_onnx(garbage)


def _broken_spec(path: Path, tmp_path: Path) -> Path:
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            d = json.loads(prop.value)
            d["form"] = "spiral"
            prop.value = json.dumps(d)
    out = tmp_path / "broken.onnx"
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("case", ["no metadata", "malformed metadata"])
def test_export_and_runtime_fail_alike(tmp_path, case):
    if case == "no metadata":
        path = build_plain_onnx(tmp_path / "plain.onnx")
        expected = r"not an edgemp model: .*plain\.onnx has no 'edgemp' metadata; export it with `edgemp export`"
    else:
        path = _broken_spec(build_sparse_model(tmp_path / "src.onnx"), tmp_path)
        expected = r"broken\.onnx: edgemp metadata is malformed|broken\.onnx: unknown graph form 'spiral'"
    with pytest.raises(ModelFormatError, match=expected) as from_export:
        load_edgemp_model(path)
    with pytest.raises(ModelFormatError, match=expected) as from_runtime:
        rt.load(path, providers="cpu")
    assert str(from_export.value) == str(from_runtime.value)


def test_spec_from_metadata_is_onnx_free():
    with pytest.raises(ModelFormatError, match="somewhere.onnx has no 'edgemp' metadata"):
        spec_from_metadata({"other": "{}"}, "somewhere.onnx")
    with pytest.raises(ModelFormatError, match="somewhere.onnx: edgemp metadata is malformed"):
        spec_from_metadata({METADATA_KEY: "{not json"}, "somewhere.onnx")


@pytest.mark.parametrize("text,reason", [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                                         ('{"format_version": ' + "1" * 5000 + "}", "4300 digits")])
def test_metadata_json_that_python_cannot_parse_is_a_model_format_error(text, reason):
    # RecursionError and the int digit limit's ValueError, not only JSONDecodeError
    expected = f"somewhere.onnx: edgemp metadata is malformed: not valid JSON .*{reason}"
    with pytest.raises(ModelFormatError, match=expected):
        spec_from_metadata({METADATA_KEY: text}, "somewhere.onnx")


def test_old_layout_import_paths_are_the_core_modules():
    from edgemp import dense_layout, ragged_layout
    from edgemp.runtime import dense, ragged

    assert dense.to_dense is dense_layout.to_dense and dense.pad_size is dense_layout.pad_size
    assert ragged.layout is ragged_layout.layout and ragged.FORM == ragged_layout.FORM == "triton-ragged"
    public = {n for n, v in vars(ragged_layout).items()
              if not n.startswith("_") and (n.isupper() or getattr(v, "__module__", None) == ragged_layout.__name__)}
    assert set(ragged.__all__) == public  # the re-export misses nothing
