"""``inference.GRPCInferenceService``: the Open Inference Protocol V2 over gRPC (Triton's
proto, what ``tritonclient.grpc`` and KServe's clients call).

Same models, batchers, limits, keys and metrics as ``/v2`` over REST
(:mod:`service.routes.v2`); wire format in :mod:`service.protocols.grpc_v2`. Methods of the
proto this service does not offer (shared memory, statistics, tracing, streaming) answer
UNIMPLEMENTED, as the generated servicer does.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from service import dataplane
from service.grpc.calls import GrpcCall, rpc
from service.protocols import grpc_v2, v2, v2_repository
from service.serving.errors import InvalidInput
from service.serving.model_store import LoadedModel
from service.serving.repository import ServedModel
from service.state import ServiceState

DESCRIPTOR = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE = DESCRIPTOR.full_name


def _method(name: str) -> Any:
    return DESCRIPTOR.methods_by_name[name]


class InferenceServicer:
    """The V2 methods, on the service's state."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    @rpc(_method("ServerLive"))
    async def ServerLive(self, request: Any, call: GrpcCall) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @rpc(_method("ServerReady"))
    async def ServerReady(self, request: Any, call: GrpcCall) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.state.ready)

    @rpc(_method("ModelReady"))
    async def ModelReady(self, request: Any, call: GrpcCall) -> Any:
        served = self.state.repository.get(request.name)  # NOT_FOUND for an unknown model
        if not request.version:
            ready = served.ready
        else:
            number = int(request.version) if request.version.isdigit() else -1
            ready = served.batcher.running and number in served.store.served
        return service_pb2.ModelReadyResponse(ready=ready and not self.state.shutting_down)

    @rpc(_method("ServerMetadata"))
    async def ServerMetadata(self, request: Any, call: GrpcCall) -> Any:
        return service_pb2.ServerMetadataResponse(
            name=v2.SERVER_NAME, version=v2.SERVER_VERSION, extensions=list(v2.EXTENSIONS)
        )

    def _described(self, request: Any) -> tuple[ServedModel, LoadedModel]:
        """The model and version a metadata or config request names (the default version
        when it names none)."""
        served, model = dataplane.choose_model(
            self.state, request.name, version=request.version or None
        )
        if not request.version:
            model = served.default_version() or model
        return served, model

    @rpc(_method("ModelMetadata"))
    async def ModelMetadata(self, request: Any, call: GrpcCall) -> Any:
        served, model = self._described(request)
        return grpc_v2.model_metadata(request.name, list(served.store.served), model)

    @rpc(_method("ModelConfig"))
    async def ModelConfig(self, request: Any, call: GrpcCall) -> Any:
        served, model = self._described(request)
        config = v2_repository.served_config(request.name, served, model, self.state.settings)
        return service_pb2.ModelConfigResponse(
            config=json_format.ParseDict(config, model_config_pb2.ModelConfig())
        )

    @rpc(_method("RepositoryIndex"))
    async def RepositoryIndex(self, request: Any, call: GrpcCall) -> Any:
        if request.repository_name:
            raise InvalidInput("this service has one model repository: leave repository_name empty")
        repository = self.state.repository
        rows = v2_repository.repository_index(
            {name: repository.models[name].store.statuses() for name in repository.names()},
            ready_only=request.ready,
        )
        return json_format.ParseDict({"models": rows}, service_pb2.RepositoryIndexResponse())

    @rpc(_method("RepositoryModelLoad"))
    async def RepositoryModelLoad(self, request: Any, call: GrpcCall) -> Any:
        settings = self.state.settings
        raise v2_repository.model_control_refused(
            "load", request.model_name, settings.models_dir, settings.poll_interval_s
        )

    @rpc(_method("RepositoryModelUnload"))
    async def RepositoryModelUnload(self, request: Any, call: GrpcCall) -> Any:
        settings = self.state.settings
        raise v2_repository.model_control_refused(
            "unload", request.model_name, settings.models_dir, settings.poll_interval_s
        )

    @rpc(_method("ModelInfer"), needs_key=True)
    async def ModelInfer(self, request: Any, call: GrpcCall) -> Any:
        state = self.state
        served, model = dataplane.choose_model(
            state, request.model_name, version=request.model_version or None
        )
        infer_request = grpc_v2.parse_infer(
            request,
            max_images=state.settings.tensor_images_limit(served.limits.max_queue_size),
            max_pixels=state.settings.max_pixels,
        )
        probabilities = await dataplane.classify_tensors(
            call, state, served, model, infer_request.images
        )
        return grpc_v2.infer_response(infer_request, model, probabilities, call.request_id)
