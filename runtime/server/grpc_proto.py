"""The KServe V2 / Triton gRPC messages edgemp serves, built from a schema in code.

The messages are the ``inference`` package of Triton's ``grpc_service.proto`` (and the part
of ``model_config.proto`` that ModelConfig answers need), with Triton's field numbers and
types, so stock ``tritonclient.grpc`` reads them unchanged (``tests/server/test_server_grpc.py``
checks every field against the descriptors tritonclient ships). Built at import from a
``FileDescriptorProto`` instead of protoc-generated ``_pb2`` modules: generated code pins
the protobuf runtime version it was generated for, while this works with any protobuf
from 4.21 on and needs no build step. Only what edgemp answers is declared; a client field
edgemp does not know is kept as unknown and ignored, as protobuf does.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool

try:  # protobuf >= 4.21
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:  # pragma: no cover - older protobuf
    from google.protobuf.message_factory import MessageFactory

    _message_class = MessageFactory().GetPrototype  # type: ignore[assignment]

PACKAGE = "inference"
SERVICE = "inference.GRPCInferenceService"
FILE_NAME = "edgemp/inference_v2.proto"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE, "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}
ENUMS: dict[str, tuple[str, ...]] = {
    "DataType": ("TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
                 "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
                 "TYPE_BF16"),
    "ModelInput.Format": ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"),
    "ModelQueuePolicy.TimeoutAction": ("REJECT", "DELAY"),
    "ModelInstanceGroup.Kind": ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"),
}
# message -> fields "name=number:type" ("*type" repeated, "{type}" map<string, type>, "type|oneof"
# a member of that oneof). Nested messages are written "Outer.Inner".
MESSAGES: dict[str, str] = {
    "ServerLiveRequest": "",
    "ServerLiveResponse": "live=1:bool",
    "ServerReadyRequest": "",
    "ServerReadyResponse": "ready=1:bool",
    "ModelReadyRequest": "name=1:string version=2:string",
    "ModelReadyResponse": "ready=1:bool",
    "ServerMetadataRequest": "",
    "ServerMetadataResponse": "name=1:string version=2:string extensions=3:*string",
    "ModelMetadataRequest": "name=1:string version=2:string",
    "ModelMetadataResponse.TensorMetadata": "name=1:string datatype=2:string shape=3:*int64",
    "ModelMetadataResponse": "name=1:string versions=2:*string platform=3:string "
                             "inputs=4:*ModelMetadataResponse.TensorMetadata outputs=5:*ModelMetadataResponse.TensorMetadata",
    "InferParameter": "bool_param=1:bool|parameter_choice int64_param=2:int64|parameter_choice "
                      "string_param=3:string|parameter_choice double_param=4:double|parameter_choice "
                      "uint64_param=5:uint64|parameter_choice",
    "InferTensorContents": "bool_contents=1:*bool int_contents=2:*int32 int64_contents=3:*int64 uint_contents=4:*uint32 "
                           "uint64_contents=5:*uint64 fp32_contents=6:*float fp64_contents=7:*double "
                           "bytes_contents=8:*bytes",
    "ModelInferRequest.InferInputTensor": "name=1:string datatype=2:string shape=3:*int64 "
                                          "parameters=4:{InferParameter} contents=5:InferTensorContents",
    "ModelInferRequest.InferRequestedOutputTensor": "name=1:string parameters=2:{InferParameter}",
    "ModelInferRequest": "model_name=1:string model_version=2:string id=3:string parameters=4:{InferParameter} "
                         "inputs=5:*ModelInferRequest.InferInputTensor "
                         "outputs=6:*ModelInferRequest.InferRequestedOutputTensor raw_input_contents=7:*bytes",
    "ModelInferResponse.InferOutputTensor": "name=1:string datatype=2:string shape=3:*int64 "
                                            "parameters=4:{InferParameter} contents=5:InferTensorContents",
    "ModelInferResponse": "model_name=1:string model_version=2:string id=3:string parameters=4:{InferParameter} "
                          "outputs=5:*ModelInferResponse.InferOutputTensor raw_output_contents=6:*bytes",
    "ModelConfigRequest": "name=1:string version=2:string",
    "ModelVersionPolicy.Latest": "num_versions=1:uint32",
    "ModelVersionPolicy": "latest=1:ModelVersionPolicy.Latest",
    "ModelInput": "name=1:string data_type=2:DataType format=3:ModelInput.Format dims=4:*int64 is_shape_tensor=6:bool "
                  "allow_ragged_batch=7:bool optional=8:bool",
    "ModelOutput": "name=1:string data_type=2:DataType dims=3:*int64 label_filename=4:string is_shape_tensor=6:bool",
    "ModelQueuePolicy": "timeout_action=1:ModelQueuePolicy.TimeoutAction default_timeout_microseconds=2:uint64 "
                        "allow_timeout_override=3:bool max_queue_size=4:uint32",
    "ModelDynamicBatching": "preferred_batch_size=1:*int32 max_queue_delay_microseconds=2:uint64 "
                            "preserve_ordering=3:bool priority_levels=4:uint64 default_priority_level=5:uint64 "
                            "default_queue_policy=6:ModelQueuePolicy",
    "ModelInstanceGroup": "name=1:string count=2:int32 kind=4:ModelInstanceGroup.Kind",
    "ModelParameter": "string_value=1:string",
    "ModelTransactionPolicy": "decoupled=1:bool",
    "ModelConfig": "name=1:string platform=2:string version_policy=3:ModelVersionPolicy max_batch_size=4:int32 "
                   "input=5:*ModelInput output=6:*ModelOutput instance_group=7:*ModelInstanceGroup "
                   "default_model_filename=8:string dynamic_batching=11:ModelDynamicBatching "
                   "parameters=14:{ModelParameter} backend=17:string model_transaction_policy=19:ModelTransactionPolicy",
    "ModelConfigResponse": "config=1:ModelConfig",
    "ModelStatisticsRequest": "name=1:string version=2:string",
    "StatisticDuration": "count=1:uint64 ns=2:uint64",
    "InferStatistics": "success=1:StatisticDuration fail=2:StatisticDuration queue=3:StatisticDuration "
                       "compute_input=4:StatisticDuration compute_infer=5:StatisticDuration "
                       "compute_output=6:StatisticDuration cache_hit=7:StatisticDuration cache_miss=8:StatisticDuration",
    "InferBatchStatistics": "batch_size=1:uint64 compute_input=2:StatisticDuration compute_infer=3:StatisticDuration "
                            "compute_output=4:StatisticDuration",
    "ModelStatistics": "name=1:string version=2:string last_inference=3:uint64 inference_count=4:uint64 "
                       "execution_count=5:uint64 inference_stats=6:InferStatistics batch_stats=7:*InferBatchStatistics",
    "ModelStatisticsResponse": "model_stats=1:*ModelStatistics",
    "RepositoryIndexRequest": "repository_name=1:string ready=2:bool",
    "RepositoryIndexResponse.ModelIndex": "name=1:string version=2:string state=3:string reason=4:string",
    "RepositoryIndexResponse": "models=1:*RepositoryIndexResponse.ModelIndex",
}
# RPC name -> (request, response) message names
RPCS: dict[str, tuple[str, str]] = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
}


def _container(file: descriptor_pb2.FileDescriptorProto, built: dict[str, Any], path: str):
    """The DescriptorProto for message ``path`` ("Outer.Inner"), created on first use."""
    if path in built:
        return built[path]
    outer, _, inner = path.rpartition(".")
    msg = (_container(file, built, outer).nested_type if outer else file.message_type).add()
    msg.name = inner
    built[path] = msg
    return msg


def _type_ref(type_name: str) -> tuple[int, str]:
    if type_name in _SCALARS:
        return _SCALARS[type_name], ""
    kind = _F.TYPE_ENUM if type_name in ENUMS else _F.TYPE_MESSAGE
    return kind, f".{PACKAGE}.{type_name}"


def _add_field(msg, path: str, name: str, number: int, spec: str) -> None:
    field = msg.field.add()
    field.name, field.number = name, number
    spec, _, oneof = spec.partition("|")
    if spec.startswith("{"):  # map<string, T>: a nested *Entry message with map_entry set
        entry = msg.nested_type.add()
        entry.name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
        entry.options.map_entry = True
        _add_field(entry, f"{path}.{entry.name}", "key", 1, "string")
        _add_field(entry, f"{path}.{entry.name}", "value", 2, spec[1:-1])
        field.label, field.type = _F.LABEL_REPEATED, _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{path}.{entry.name}"
        return
    field.label = _F.LABEL_REPEATED if spec.startswith("*") else _F.LABEL_OPTIONAL
    field.type, ref = _type_ref(spec.lstrip("*"))
    if ref:
        field.type_name = ref
    if oneof:
        names = [o.name for o in msg.oneof_decl]
        if oneof not in names:
            msg.oneof_decl.add().name = oneof
            names.append(oneof)
        field.oneof_index = names.index(oneof)


def _build() -> dict[str, type]:
    file = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    built: dict[str, Any] = {}
    for path in MESSAGES:
        _container(file, built, path)
    for path, values in ENUMS.items():
        outer, _, name = path.rpartition(".")
        enum = (built[outer].enum_type if outer else file.enum_type).add()
        enum.name = name
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for path, spec in MESSAGES.items():
        for item in spec.split():
            name, _, rest = item.partition("=")
            number, _, kind = rest.partition(":")
            _add_field(built[path], path, name, int(number), kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {path: _message_class(pool.FindMessageTypeByName(f"{PACKAGE}.{path}")) for path in MESSAGES}


CLASSES = _build()

ServerLiveResponse = CLASSES["ServerLiveResponse"]
ServerReadyRequest = CLASSES["ServerReadyRequest"]
ServerReadyResponse = CLASSES["ServerReadyResponse"]
ModelReadyRequest = CLASSES["ModelReadyRequest"]
ModelReadyResponse = CLASSES["ModelReadyResponse"]
ServerMetadataResponse = CLASSES["ServerMetadataResponse"]
ModelMetadataRequest = CLASSES["ModelMetadataRequest"]
ModelMetadataResponse = CLASSES["ModelMetadataResponse"]
ModelInferRequest = CLASSES["ModelInferRequest"]
ModelInferResponse = CLASSES["ModelInferResponse"]
ModelConfigRequest = CLASSES["ModelConfigRequest"]
ModelConfigResponse = CLASSES["ModelConfigResponse"]
ModelStatisticsRequest = CLASSES["ModelStatisticsRequest"]
ModelStatisticsResponse = CLASSES["ModelStatisticsResponse"]
RepositoryIndexResponse = CLASSES["RepositoryIndexResponse"]


def infer_request_bytes(model: str, tensors: dict[str, np.ndarray], request_id: str = "") -> bytes:
    """A serialized ModelInferRequest with every input in ``raw_input_contents`` (as tritonclient sends)."""
    req = ModelInferRequest(model_name=model, id=request_id)
    for name, value in tensors.items():
        t = req.inputs.add(name=name, datatype="FP32" if value.dtype == np.float32 else "INT64")
        t.shape.extend(value.shape)
        req.raw_input_contents.append(np.ascontiguousarray(value).tobytes())
    return req.SerializeToString()
