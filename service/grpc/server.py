"""The gRPC server beside HTTP: same process, same event loop, same state.

It serves the Open Inference Protocol V2 (:mod:`.inference_v2`), TF Serving's
PredictionService and ModelService (:mod:`.tfserving`), health checking (:mod:`.health`) and
server reflection (``grpcurl`` lists and describes every method). Its limits come from the
same settings as HTTP's: a message larger than ``MAX_UPLOAD_BYTES`` is refused by gRPC itself
(RESOURCE_EXHAUSTED), at most ``GRPC_MAX_CONCURRENT_STREAMS`` calls run per connection and
``MAX_CONNECTIONS`` calls per process (more: RESOURCE_EXHAUSTED). With several workers each
binds the port with ``SO_REUSEPORT`` and the kernel spreads connections among them; one process
binds it alone, so a port already taken fails the start instead of being shared silently.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.grpc import health, inference_v2, tfserving
from service.grpc.calls import add_servicer
from service.grpc.health import HealthServicer
from service.grpc.inference_v2 import InferenceServicer
from service.grpc.tfserving import ModelServicer, PredictionServicer
from service.state import ServiceState

logger = logging.getLogger(__name__)

SERVICES = (
    inference_v2.SERVICE,
    tfserving.PREDICTIONS.full_name,
    tfserving.MODELS.full_name,
    health.SERVICE,
    reflection.SERVICE_NAME,
)


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """The service's gRPC server: :meth:`start` once the models are served, :meth:`stop` in
    the lifespan's shutdown, before the batchers stop."""

    def __init__(self, state: ServiceState, *, shared_port: bool) -> None:
        settings = state.settings
        self._state = state
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_upload_bytes),
                ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
                ("grpc.so_reuseport", 1 if shared_port else 0),
            ],
            maximum_concurrent_rpcs=settings.max_connections,
        )
        add_servicer(self._server, InferenceServicer(state), inference_v2.DESCRIPTOR)
        add_servicer(self._server, PredictionServicer(state), tfserving.PREDICTIONS)
        add_servicer(self._server, ModelServicer(state), tfserving.MODELS)
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(state), self._server)
        reflection.enable_server_reflection(SERVICES, self._server)
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: any free port) and serve; returns the port bound."""
        try:
            bound = self._server.add_insecure_port(address(host, port))
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise RuntimeError(
                f"cannot listen for gRPC on {address(host, port)} (port in use?): set "
                "IMGCLS_GRPC_PORT to a free port, or empty to turn gRPC off"
            )
        await self._server.start()
        self.port = bound
        logger.info("gRPC on %s", address(host, bound))
        return bound

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls and let those in flight finish, for at most ``grace_s`` seconds."""
        await self._server.stop(grace_s)
