"""Read a ``torch.save`` zip checkpoint as inert data: no code from the file ever runs.

chemprop (and Lightning) checkpoints pickle classes and module instances next to the
weights, and their own loaders use ``torch.load(weights_only=False)`` — which runs whatever
the pickle names. Here a restricted :class:`pickle.Unpickler` resolves every global itself:

* tensors are rebuilt from the zip's raw storages with numpy (bounds-checked), so torch's
  rebuild functions are never called;
* ``collections.OrderedDict`` and a few builtin containers are real (they run no user code);
* names under an allow-listed prefix (``chemprop.``, ``torch.nn.modules.`` …) become
  :class:`InertObject` placeholders that only *record* their constructor arguments and
  state — the real class is never imported, constructed or called;
* any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` …) is refused
  with a :class:`~edgemp.errors.CheckpointError` before anything is built.

The result is plain dicts, lists, numpy arrays and placeholders, which the importer reads
like a JSON document.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgemp.errors import CheckpointError

# torch's legacy storage class names (what torch.save still pickles) → element type.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("float32"), "DoubleStorage": np.dtype("float64"), "HalfStorage": np.dtype("float16"),
    "LongStorage": np.dtype("int64"), "IntStorage": np.dtype("int32"), "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"), "ByteStorage": np.dtype("uint8"), "BoolStorage": np.dtype("bool"),
}
_REAL_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol-2 pickles spell builtins the Python 2 way
    ("__builtin__", "frozenset"): frozenset,
}


class InertObject:
    """A pickled object kept as data: the global it names, its constructor args and its state.

    Never an instance of the real class: nothing of the class is imported or run.
    """

    global_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.items = {}  # dict subclasses (e.g. Lightning's AttributeDict) pickle their entries here
        obj.listitems = []  # list subclasses likewise
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # REDUCE calls cls(*args); __new__ already recorded them

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.listitems.append(value)

    def extend(self, values: Any) -> None:
        self.listitems.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"

    @property
    def attrs(self) -> dict:
        """The pickled ``__dict__`` (the BUILD state), or ``{}``."""
        if isinstance(self.state, dict):
            return self.state
        if isinstance(self.state, tuple) and self.state and isinstance(self.state[0], dict):
            return self.state[0]
        return {}


class _StorageType:
    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name, self.dtype = name, dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """numpy twin of ``torch._utils._rebuild_tensor_v2``, refusing views that leave or outgrow the storage."""
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if not isinstance(storage, np.ndarray) or len(size) != len(stride) or offset < 0 or min(size + (0,)) < 0:
        raise CheckpointError("a tensor in the checkpoint has an invalid layout")
    _check_view_fits(storage, offset, size, stride)
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False
    )
    try:
        return np.array(view)
    except MemoryError as e:  # within the storage's size, but the machine still lacks the memory
        raise CheckpointError(f"a tensor of shape {list(size)} in the checkpoint does not fit in memory") from e


def _check_view_fits(storage: np.ndarray, offset: int, size: tuple, stride: tuple) -> None:
    """Copying a view costs ``numel`` elements, so a view may hold no more elements than its storage.

    Bounding only the last element is not enough: a stride-0 view of shape (1e9, 1e9) on a
    1-element storage passes that test and then asks for exabytes. Real tensors saved by
    ``torch.save`` are contiguous or slices of a larger storage, so these rules refuse none.
    """
    numel = int(np.prod(size, dtype=object)) if size else 1
    if numel == 0:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if min(stride + (0,)) < 0 or last >= storage.shape[0]:
        raise CheckpointError("a tensor in the checkpoint reaches outside its storage")
    if numel > storage.shape[0]:
        raise CheckpointError(
            f"a tensor in the checkpoint is larger than its storage ({numel} elements of shape {list(size)}, "
            f"storage holds {storage.shape[0]}); refused")
    if any(s == 0 and n > 1 for n, s in zip(size, stride)):
        raise CheckpointError(f"a tensor of shape {list(size)} in the checkpoint repeats elements (stride 0); refused")


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


_TENSOR_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


# torch.save stores entries uncompressed; a compressed one may expand this many times, at most, when
# read (beyond 1 MiB): zeros deflate ~1000:1, so a 1 MB file could otherwise ask for a gigabyte.
MAX_EXPANSION = 100


def _read_entry(archive: zipfile.ZipFile, name: str, source: str) -> bytes:
    """Entry ``name``, refusing a compressed one that would expand past :data:`MAX_EXPANSION`
    (zipfile stops at the declared size, so checking that size bounds what is read)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(MAX_EXPANSION * info.compress_size, 1 << 20):
        raise CheckpointError(f"{source}: entry {name!r} expands from {info.compress_size} to {info.file_size} bytes "
                              "when unpacked (a zip bomb?); torch.save writes entries uncompressed")
    return archive.read(info)


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, allowed: tuple[str, ...],
                 source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._allowed, self._source = archive, prefix, allowed, source
        self._storages: dict[str, np.ndarray] = {}
        self._classes: dict[str, type] = {}
        self.seen: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        qualname = f"{module}.{name}"
        self.seen.add(qualname)
        if key in _REAL_GLOBALS:
            return _REAL_GLOBALS[key]
        if key in _TENSOR_GLOBALS:
            return _TENSOR_GLOBALS[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if any(qualname.startswith(p) for p in self._allowed):
            if qualname not in self._classes:  # a fresh, empty class: the name is all it keeps
                self._classes[qualname] = type(name, (InertObject,), {"global_name": qualname})
            return self._classes[qualname]
        raise CheckpointError(
            f"refused to load {self._source}: its pickle references {qualname!r}, which is not chemprop "
            "model data (loading it with torch.load(weights_only=False) would run that code)"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._source}: unsupported persistent record in the pickle")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._source}: tensor storage of an unsupported type ({storage_type!r})")
        if key not in self._storages:
            try:
                raw = _read_entry(self._archive, f"{self._prefix}data/{key}", self._source)
            except KeyError as e:
                raise CheckpointError(f"{self._source}: storage {key!r} is missing from the archive") from e
            if len(raw) % storage_type.dtype.itemsize:
                raise CheckpointError(f"{self._source}: storage {key!r} has a truncated size")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
        return self._storages[key]


def load_inert(path: str | Path, allowed_prefixes: tuple[str, ...]) -> Any:
    """Unpickle the ``torch.save`` zip at ``path`` as inert data (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} does not exist")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(
            f"{p} is not a torch.save zip archive (legacy torch files and bare pickles are not read)"
        )
    with zipfile.ZipFile(p) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            raise CheckpointError(f"{p} is not a torch.save archive: expected one data.pkl, found {len(names)}")
        prefix = names[0][: -len("data.pkl")]
        order = (_read_entry(archive, f"{prefix}byteorder", str(p)).decode("ascii", "replace").strip()
                 if f"{prefix}byteorder" in archive.namelist() else "little")
        if order != "little":
            raise CheckpointError(f"{p} was saved on a big-endian machine; re-save it on a little-endian one")
        unpickler = _InertUnpickler(_read_entry(archive, names[0], str(p)), archive, prefix, allowed_prefixes, str(p))
        try:
            return unpickler.load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
            raise CheckpointError(f"{p}: malformed checkpoint pickle: {type(e).__name__}: {e}") from e
