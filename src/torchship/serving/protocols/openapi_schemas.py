"""The bodies the APIs send and take, as OpenAPI 3.0 schemas (``components.schemas`` of the API
description that :mod:`torchship.serving.protocols.openapi` serves): TorchServe's error body and
management answers, the Open Inference Protocol's (v2) and KServe v1's, and small builders for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ANY", "BINARY", "BOOLEAN", "INTEGER", "NUMBER", "SCHEMAS", "STRING", "Schema", "obj", "ref"]

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to ``SCHEMAS[name]``."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: Iterable[str] = (), **properties: Schema) -> Schema:
    """An object schema with ``properties``, of which ``required`` must be present."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
ANY: Schema = {}
BINARY: Schema = {"type": "string", "format": "binary"}

# A v2 tensor in JSON, as requests send inputs and responses return outputs.
_TENSORS = {
    "type": "array",
    "items": obj(
        ("name", "datatype", "shape", "data"),
        name=STRING,
        datatype=STRING,
        shape={"type": "array", "items": INTEGER},
        parameters=obj(),
        data={"type": "array", "items": ANY},
    ),
}

SCHEMAS: dict[str, Schema] = {
    "TorchServeError": obj(("code", "type", "message"), code=INTEGER, type=STRING, message=STRING),
    "V2Error": obj(("error",), error=STRING),  # KServe v1's error body too
    "Status": obj(("status",), status=STRING),
    "Health": obj(
        ("status",),
        status={"type": "string", "enum": ["Healthy", "Partial Healthy", "Unhealthy"]},
        unavailable={"type": "array", "items": STRING},
    ),
    "OpenAPI": obj(("openapi", "info", "paths"), openapi=STRING, info=obj(), paths=obj()),
    "ModelList": obj(
        ("models",),
        nextPageToken=STRING,
        models={
            "type": "array",
            "items": obj(("modelName", "modelUrl"), modelName=STRING, modelUrl=STRING),
        },
    ),
    "ModelDescription": obj(
        ("modelName", "modelVersion", "modelUrl", "minWorkers", "maxWorkers", "batchSize", "workers"),
        modelName=STRING,
        modelVersion=STRING,
        modelUrl=STRING,
        engine=STRING,
        runtime=STRING,
        minWorkers=INTEGER,
        maxWorkers=INTEGER,
        batchSize=INTEGER,
        maxBatchDelay=NUMBER,
        responseTimeout=NUMBER,
        startupTimeout=NUMBER,
        loadedAtStartup=BOOLEAN,
        isDefault=BOOLEAN,
        handler={"type": "string", "nullable": True},
        loadError=STRING,
        workers={
            "type": "array",
            "items": obj(
                ("id", "status"),
                id=STRING,
                startTime={"type": "string", "nullable": True},
                status=STRING,
                memoryUsage={"type": "integer", "nullable": True},
                pid={"type": "integer", "nullable": True},
                gpu=BOOLEAN,
                gpuUsage=STRING,
                device={"type": "string", "nullable": True},
            ),
        },
        jobQueueStatus=obj(
            ("remainingCapacity", "pendingRequests"), remainingCapacity=INTEGER, pendingRequests=INTEGER
        ),
    ),
    "Token": {"type": "object", "additionalProperties": obj(("key",), key=STRING)},
    "V2ServerMetadata": obj(
        ("name", "version", "extensions"),
        name=STRING,
        version=STRING,
        extensions={"type": "array", "items": STRING},
    ),
    "V2Tensor": obj(
        ("name", "datatype", "shape"),
        name=STRING,
        datatype=STRING,
        shape={"type": "array", "items": INTEGER},
        parameters=obj(),
    ),
    "V2ModelMetadata": obj(
        ("name", "platform", "inputs", "outputs"),
        name=STRING,
        versions={"type": "array", "items": STRING},
        platform=STRING,
        inputs={"type": "array", "items": ref("V2Tensor")},
        outputs={"type": "array", "items": ref("V2Tensor")},
    ),
    "V2Stats": obj(
        ("model_stats",),
        model_stats={
            "type": "array",
            "items": obj(
                ("name", "version", "inference_count", "execution_count", "inference_stats"),
                name=STRING,
                version=STRING,
                inference_count=INTEGER,
                execution_count=INTEGER,
                inference_stats={
                    "type": "object",
                    "additionalProperties": obj(("count", "ns"), count=INTEGER, ns=INTEGER),
                },
            ),
        },
    ),
    "V2RepositoryIndex": {
        "type": "array",
        "items": obj(
            ("name", "version", "state"),
            name=STRING,
            version=STRING,
            state={"type": "string", "enum": ["READY", "UNAVAILABLE"]},
            reason=STRING,
        ),
    },
    "V2ModelConfig": obj(
        ("name", "max_batch_size", "input", "output"),
        name=STRING,
        version=STRING,
        platform=STRING,
        max_batch_size=INTEGER,
        input={
            "type": "array",
            "items": obj(("name", "data_type", "dims"), name=STRING, data_type=STRING),
        },
        output={
            "type": "array",
            "items": obj(("name", "data_type", "dims"), name=STRING, data_type=STRING),
        },
        dynamic_batching=obj(),
        instance_group={"type": "array", "items": obj()},
    ),
    "V2Ready": obj(("ready",), ready=BOOLEAN, unavailable={"type": "array", "items": STRING}),
    "V2ModelReady": obj(("name", "ready"), name=STRING, ready=BOOLEAN),
    "V2InferenceRequest": obj(
        ("inputs",),
        id=STRING,
        parameters=obj(),
        inputs=_TENSORS,
        outputs={"type": "array", "items": obj(("name",), name=STRING, parameters=obj())},
    ),
    "V2InferenceResponse": obj(
        ("model_name", "outputs"),
        id=STRING,
        model_name=STRING,
        model_version=STRING,
        parameters=obj(),
        outputs=_TENSORS,
    ),
}
