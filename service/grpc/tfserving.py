"""TensorFlow Serving's gRPC API: ``tensorflow.serving.PredictionService`` (Predict,
GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus), what the stubs of
``tensorflow-serving-api`` call.

Same models, batchers, limits, keys and metrics as ``/v1`` over REST
(:mod:`service.routes.tfserving`); wire format in :mod:`service.protocols.grpc_tfserving`.
Classify, Regress, MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

from service import dataplane
from service.grpc.calls import GrpcCall, rpc
from service.protocols import grpc_tfserving
from service.serving.errors import ModelNotFound
from service.state import ServiceState

PREDICTIONS = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
MODELS = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]


class PredictionServicer:
    """Predict and GetModelMetadata, on the service's state."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    @rpc(PREDICTIONS.methods_by_name["Predict"], needs_key=True)
    async def Predict(self, request: Any, call: GrpcCall) -> Any:
        state = self.state
        name, version, label = grpc_tfserving.model_spec(request.model_spec)
        served, model = dataplane.choose_model(state, name, version=version, label=label)
        images_input = grpc_tfserving.parse_predict(
            request,
            max_images=state.settings.tensor_images_limit(served.limits.max_queue_size),
            max_pixels=state.settings.max_pixels,
        )
        probabilities = await dataplane.classify_tensors(call, state, served, model, images_input)
        return grpc_tfserving.predict_response(model, probabilities)

    @rpc(PREDICTIONS.methods_by_name["GetModelMetadata"])
    async def GetModelMetadata(self, request: Any, call: GrpcCall) -> Any:
        name, version, label = grpc_tfserving.model_spec(request.model_spec)
        served, model = dataplane.choose_model(self.state, name, version=version, label=label)
        if version is None and label is None:
            model = served.default_version() or model
        return grpc_tfserving.metadata_response(request, model)


class ModelServicer:
    """GetModelStatus, on the service's state."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    @rpc(MODELS.methods_by_name["GetModelStatus"])
    async def GetModelStatus(self, request: Any, call: GrpcCall) -> Any:
        name, version, label = grpc_tfserving.model_spec(request.model_spec)
        served = self.state.repository.get(name)  # NOT_FOUND for an unknown model
        if label is not None:
            _, model = dataplane.choose_model(self.state, name, label=label)
            version = model.version
        rows = served.store.statuses()
        if version is not None:
            rows = [row for row in rows if row.version == version]
        response = grpc_tfserving.status_response(rows)
        if not response.model_version_status:
            raise ModelNotFound(
                f"no managed version {version if version is not None else ''} of {name!r}; "
                f"served versions: {', '.join(map(str, sorted(served.store.served))) or 'none'}"
            )
        return response
