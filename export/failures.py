"""Turn a failed ``torch.onnx.export`` into one sentence in the model author's terms.

The exporter's own message is dozens of lines of traced graph and advice about PyTorch's
internals. What a user needs is: which of *their* modules failed (module path and layer
class), the line of code that did it, what kind of operation that is, and the usual fix.
The full trace travels with the error as ``details`` for ``edgemp export --verbose``.
"""
from __future__ import annotations

import contextlib
import io
import linecache
import logging
import os
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from edgemp.errors import ExportError

_DATA_DEPENDENT = (
    "decides a size or a branch from the data's values, but an exported graph's shapes must follow "
    "from its input shapes",
    "keep shapes static (torch.where / masked_fill instead of dropping entries through a boolean mask) "
    "and take sizes from inputs (size=num_graphs) instead of int(index.max()) + 1 or .item()",
)
_SPECIALIZED = (
    "turns a dynamic size (nodes, edges or graphs) into a fixed Python number",
    "keep sizes as tensor shapes; avoid Python ints and loops over a tensor's length",
)
_NO_TRANSLATION = (
    "uses an operation that has no ONNX translation",
    "replace it with standard tensor ops, or compute it outside the model",
)


@dataclass(frozen=True)
class _Explained:
    kind: str  # what the code does, as a verb phrase
    fix: str  # the usual fix
    op: str = ""  # the operator's name, where one is to blame


def _root(error: BaseException) -> BaseException:
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def _classify(root: BaseException) -> _Explained:
    name = type(root).__name__
    text = str(root)
    if "DataDependent" in name or "data-dependent" in text:
        return _Explained(*_DATA_DEPENDENT)
    if "Constraint" in name or "specialized" in text or "specialize" in text:
        return _Explained(*_SPECIALIZED)
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if missing or "DispatchError" in name:
        return _Explained(*_NO_TRANSLATION, op=missing.group(1) if missing else "")
    first = next((line.strip() for line in text.splitlines() if line.strip()), name)
    return _Explained(f"failed with {name}: {first[:200]}", "see the full trace")


def _is_library_frame(filename: str) -> bool:
    """PyTorch's own frames (the tracer, dispatch) are never what the user should look at."""
    norm = filename.replace(os.sep, "/")
    if "/torch_geometric/" in norm:
        return False
    return "/torch/" in norm or "/onnxscript/" in norm or "/onnx_ir/" in norm or norm.startswith("<")


def _short(filename: str) -> str:
    norm = filename.replace(os.sep, "/")
    if "site-packages/" in norm:
        return norm.split("site-packages/", 1)[1]
    try:
        return os.path.relpath(filename)
    except ValueError:
        return filename


def _user_path(path: str) -> str:
    """A module path under the export wrapper, as the user names it (the wrapper's ``net.`` dropped)."""
    return path[len("net."):] if path.startswith("net.") else ("" if path == "net" else path)


def _module_paths(model) -> dict[int, str]:
    """id(submodule) → its dotted path under the user's model."""
    paths = {}
    for path, module in model.named_modules():
        paths.setdefault(id(module), _user_path(path))
    return paths


def _where(tb: TracebackType | None, model) -> tuple[str, str]:
    """(``path (Layer)`` of the innermost user module on the stack, ``file:line `code```)."""
    paths = _module_paths(model) if model is not None else {}
    layer, location = "", ""
    for frame, lineno in traceback.walk_tb(tb):
        owner = frame.f_locals.get("self")
        path = paths.get(id(owner)) if owner is not None else None
        if path:  # the root wrapper and the model itself have path "" and name nothing useful
            layer = f"{path} ({type(owner).__name__})"
        if not _is_library_frame(frame.f_code.co_filename):
            code = linecache.getline(frame.f_code.co_filename, lineno).strip()
            location = f"{_short(frame.f_code.co_filename)}:{lineno}" + (f" `{code}`" if code else "")
    return layer, location


def _fx_node(error: BaseException):
    """The innermost FX node the ONNX translator was working on, if the failure came after tracing."""
    found = None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for frame, _ in traceback.walk_tb(error.__traceback__):
            node = frame.f_locals.get("node")
            if type(node).__name__ == "Node" and isinstance(getattr(node, "meta", None), dict):
                found = node
        error = error.__cause__
    return found


def _where_in_graph(node) -> tuple[str, str]:
    """(``path (Layer)``, ``file:line `code```) from the metadata torch.export keeps on each node."""
    layer = ""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        path = _user_path(path)
        cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
        layer = f"{path} ({cls_name})" if path else ""
    location = ""
    lines = (node.meta.get("stack_trace") or "").splitlines()
    for i, line in enumerate(lines):
        match = re.match(r'\s*File "([^"]+)", line (\d+)', line)
        if match and not _is_library_frame(match.group(1)):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            location = f"{_short(match.group(1))}:{match.group(2)}" + (f" `{code}`" if code else "")
    return layer, location


def explain_export_failure(error: BaseException, model=None, captured_output: str = "") -> ExportError:
    """One-line :class:`ExportError` for a failed export; ``details`` holds the full trace.

    ``model`` is the module being exported (the export wrapper or the user's model): its
    ``named_modules()`` turn the failing frame's ``self`` into a module path.
    """
    root = _root(error)
    why = _classify(root)
    layer, location = _where(root.__traceback__, model)
    node = None if location else _fx_node(error)
    if node is not None:  # failed while translating the traced graph: no user frames on the stack
        layer, location = _where_in_graph(node)
    subject = f"layer {layer}" if layer else "the model's own forward"
    op = f" ({why.op})" if why.op else ""
    where = f"{location} " if location else ""
    message = f"cannot export {subject}: {where}{why.kind}{op}. Usual fix: {why.fix} (--verbose: full trace)"
    err = ExportError(message)
    err.details = "".join(traceback.format_exception(error)) + (captured_output or "")
    return err


# Loggers that print the tracer's internals (symbol bookkeeping, the traced graph) while exporting.
_TRACER_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo",
                   "torch.onnx._internal.exporter._registration")


@contextlib.contextmanager
def quiet_tracer(sink: io.StringIO) -> Iterator[None]:
    """Send the exporter's prints to ``sink`` and mute its internal warnings for one export.

    What went wrong reaches the user through :func:`explain_export_failure`; the raw output
    stays available as the error's ``details``.
    """
    loggers = [logging.getLogger(name) for name in _TRACER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
