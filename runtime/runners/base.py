"""The :class:`Runner` interface every execution backend implements.

A runner turns named numpy feeds into named numpy outputs and knows nothing about graphs
or texts: the input layouts (:class:`edgemp.runtime.model.Model` for graphs,
:class:`edgemp.runtime.text.TextModel` for texts) parse the edgemp spec the runner carries
(:attr:`Runner.metadata`, read with :mod:`edgemp.spec` like every other reader), pick the
outputs they need with :meth:`Runner.fetch`, build the feeds and read the outputs back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping, Sequence, TypeVar

import numpy as np

from edgemp.errors import InternalError, ModelFormatError

logger = logging.getLogger(__name__)


def one_line(e: BaseException, limit: int = 200) -> str:
    """Backend messages span lines and repeat the path: keep the first useful line."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class RunnerOptions:
    """How to open a model file.

    Args:
        providers: ONNX Runtime providers: ``auto`` (TensorRT > CUDA > CPU, whatever is
            installed), ``cpu``, ``cuda``, ``tensorrt``, or a list of ORT provider names
            (default: ``auto``). The ``tensorrt`` runner ignores it.
        threads: ORT intra-op threads (default: ``None``, the runner's default); 0 = ORT's own.
        allow_spinning: let idle ORT pool threads spin (default: ``False``).
        disabled_optimizers: ONNX Runtime graph rewrites to skip, by name (e.g.
            ``SkipLayerNormFusion``, which slows int8 text encoders on CPU); default none.
    """

    providers: str | Sequence[str] = "auto"
    threads: int | None = None
    allow_spinning: bool = False
    disabled_optimizers: tuple[str, ...] = ()


class Runner:
    """Named numpy feeds in, named numpy outputs out. Subclasses implement :meth:`_infer`."""

    name: ClassVar[str] = ""  # the registry name (:data:`edgemp.runtime.runners.RUNNERS`)
    spec_origin: ClassVar[str] = "metadata"  # where the spec was read, for error messages
    outputs_origin: ClassVar[str] = "the model"  # what declares the outputs, for error messages

    path: Path
    metadata: Mapping[str, str]  # the model's metadata map; the edgemp spec is under edgemp.spec.METADATA_KEY
    input_names: tuple[str, ...]  # inputs the backend declares; only these are fed
    declared_outputs: tuple[str, ...]  # every output the backend can produce
    output_names: tuple[str, ...] = ()  # the outputs :meth:`infer` returns (set by :meth:`fetch`)
    providers: tuple[str, ...] = ()  # what actually runs
    # Each input's and output's dims as the backend declares them: an int where static, None
    # where symbolic; a name missing (or the whole map empty) when the backend does not say.
    input_shapes: Mapping[str, tuple[int | None, ...]] = {}
    output_shapes: Mapping[str, tuple[int | None, ...]] = {}
    fallbacks: tuple[str, ...] = ()  # requested accelerators that did not activate

    @classmethod
    def open(cls, path: str | Path, options: RunnerOptions) -> "Runner":
        """Open ``path`` with the options this backend understands (by default: none)."""
        return cls(path)  # type: ignore[call-arg]

    def fetch(self, names: Sequence[str]) -> None:
        """Return only ``names`` from now on; a name the backend does not produce is a format error."""
        missing = [n for n in names if n not in self.declared_outputs]
        if missing:
            raise ModelFormatError(
                f"{self.path}: {self.spec_origin} lists output(s) {missing} that {self.outputs_origin} does not produce"
            )
        self.output_names = tuple(names)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            chosen = {name: feeds[name] for name in self.input_names}
        except KeyError as e:
            raise InternalError(f"no feed for model input {e.args[0]!r}") from e
        return self._infer(chosen)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release backend resources (a no-op unless the backend holds device memory)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_Layout = TypeVar("_Layout", bound="InputLayout")


class InputLayout:
    """An input layout over one runner: what graph models and text models have in common.

    A layout (:class:`~edgemp.runtime.model.Model` for graphs,
    :class:`~edgemp.runtime.text.TextModel` for texts) turns its inputs into the runner's
    feeds and the runner's outputs back into answers; the inputs the model declares, the
    providers that run it and its lifetime are the runner's.
    """

    runner: Runner

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.runner.input_names

    @property
    def providers(self) -> tuple[str, ...]:
        """Execution providers that actually run (after any GPU -> CPU fallback)."""
        return self.runner.providers

    @property
    def provider_fallbacks(self) -> tuple[str, ...]:
        """Requested GPU providers that onnxruntime did not activate."""
        return self.runner.fallbacks

    def close(self) -> None:
        self.runner.close()

    def __enter__(self: _Layout) -> _Layout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
