"""ModelInferRequests a model has seen before, each decoded once (gRPC's header plans).

A ModelInferRequest carrying its tensors in ``raw_input_contents`` is, for molecule-sized
graphs, the same few hundred bytes of description (model, input names, datatypes, shapes,
requested outputs, parameters) around the raw bytes, for every request with the same node
and edge counts. Reading that description out of protobuf objects and checking it costs
~20 µs of the event loop per call, more than the rest of the message (benchmarks/results/
server.md §0g). So the message is split at the protobuf wire level into its *head* (every
top-level field but ``id`` and ``raw_input_contents``, in order), its id and its raw contents;
a head that decoded once without error is kept as a plan, keyed by its exact bytes, and a
later call with the same head gets arrays that are views of its own message at the raw
contents' offsets, each checked against the planned byte size.

Sound because protobuf parsing is field by field: the head's fields keep their order (so
repeated fields and last-one-wins fields read the same), and the id and raw contents are
read as the parser would (one id; the raw entries in order). Anything irregular — a
group, a truncated or overlong varint, an id given twice or not in UTF-8, a raw entry of the wrong
size, BYTES inputs, a head over ``grpc_wire.MAX_HEAD_BYTES`` — takes the full decode, whose errors
stay the one answer for bad requests.

Most clients (tritonclient, edgemp's own) write the fields in number order with no id, so such
a message is its head followed by its raw entries, and its length says which plans can match:
for those, its head and each raw entry's tag and length are compared at the offsets the plan
gives, with no walk over its fields (they are the fields the walk would find).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from edgemp.runtime.server.grpc_wire import Split, raw_entry_prefix, split
from edgemp.runtime.server.protocol import DTYPES, InferRequest, RequestedOutput

MAX_PLANS = 512  # distinct (model, shapes, outputs, parameters) descriptions kept


class _Plan(NamedTuple):
    served: Any  # the ServedModel the head names
    tensors: tuple[tuple[str, np.dtype, tuple[int, ...], int], ...]  # name, dtype, shape, bytes; input order
    parameters: dict[str, Any]  # shared and read-only, as the HTTP header plans'
    outputs: list[RequestedOutput] | None
    memo: dict[str, Any]  # what the served model decided once for this head (InferRequest.memo)


class GrpcPlans:
    """Decode a serialized ModelInferRequest, through a plan when its head was seen before."""

    def __init__(self, max_plans: int = MAX_PLANS) -> None:
        self.max_plans = max_plans
        self._plans: dict[bytes, _Plan] = {}
        # a no-id message's length -> (head, each raw entry's tag and length with its offset, the raw
        # entries' (offset, length)) of the plans it may be (_entries)
        self._by_length: dict[int, list[tuple[bytes, tuple[tuple[bytes, int], ...], list[tuple[int, int]]]]] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def lookup(self, data: bytes, current: Callable[[Any], bool]) -> tuple[Split | None, tuple[Any, InferRequest] | None]:
        """(the message's split, (served model, request) when a plan answers it). ``current``
        says whether a plan's model is still the one served under its name."""
        parts = self._head_then_raw(data)
        if parts is None:
            parts = split(data)
            if parts is None:
                return None, None
        plan = self._plans.get(parts.head)
        if plan is None or len(parts.raw) != len(plan.tensors) or not current(plan.served):
            return parts, None
        inputs = {}
        for (name, dtype, shape, nbytes), (offset, length) in zip(plan.tensors, parts.raw):
            if length != nbytes:
                return parts, None
            inputs[name] = np.ndarray(shape, dtype, data, offset)  # a read-only view of the message
        try:
            request_id = parts.request_id.decode("utf-8") if parts.request_id else None
        except UnicodeDecodeError:
            return parts, None  # the full decode refuses it
        return parts, (plan.served, InferRequest(inputs, request_id, plan.parameters, plan.outputs, True, plan.memo))

    def _head_then_raw(self, data: bytes) -> Split | None:
        """The split of a message that is a kept head followed by only its raw entries (see the
        module docstring); None for any other message (the walk splits it)."""
        for head, separators, raw in self._by_length.get(len(data), ()):
            # the head's bytes, then each entry's tag and length where its plan puts them: with the
            # length right, the rest are the entries' bytes, as the walk would read them
            if data.startswith(head) and all(data.startswith(sep, at) for sep, at in separators):
                return Split(head, b"", raw)
        return None

    def keep(self, parts: Split, served: Any, message: Any, request: InferRequest) -> None:
        """Keep the plan of a head whose message (``message``, parsed) just decoded without error."""
        if not message.raw_input_contents or len(message.raw_input_contents) != len(message.inputs):
            return
        tensors = []
        for tensor, (_, length) in zip(message.inputs, parts.raw):
            dtype = DTYPES.get(tensor.datatype)
            if dtype is None:  # BYTES: elements of varying length, decoded every time
                return
            shape = tuple(tensor.shape)
            tensors.append((tensor.name, dtype, shape, length))
        if parts.head in self._plans:
            self._forget(parts.head)  # a stale plan (its model no longer served under its name) is replaced
        elif len(self._plans) >= self.max_plans:
            self._forget(next(iter(self._plans)))  # the oldest goes (only the event loop writes here)
        self._plans[parts.head] = _Plan(served, tuple(tensors), request.parameters, request.outputs, {})
        whole, shortcut = _entries(parts.head, tensors)
        self._by_length.setdefault(whole, []).append(shortcut)

    def _forget(self, head: bytes) -> None:
        whole, shortcut = _entries(head, self._plans.pop(head).tensors)
        shortcuts = self._by_length[whole]
        shortcuts.remove(shortcut)
        if not shortcuts:
            del self._by_length[whole]


def _entries(head: bytes, tensors: Sequence[tuple[str, np.dtype, tuple[int, ...], int]]
             ) -> tuple[int, tuple[bytes, tuple[tuple[bytes, int], ...], list[tuple[int, int]]]]:
    """A plan's message with no id, as its head then its raw entries: (its length, (the head, each
    entry's tag and length with where they start, each entry's bytes as (offset, length)))."""
    separators, raw, pos = [], [], len(head)
    for *_, nbytes in tensors:
        sep = raw_entry_prefix(nbytes)
        separators.append((sep, pos))
        raw.append((pos + len(sep), nbytes))
        pos += len(sep) + nbytes
    return pos, (head, tuple(separators), raw)
