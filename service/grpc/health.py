"""``grpc.health.v1.Health``: the server (service ``""``) and each model (its name), computed
from the service's state on every call, so that Kubernetes' gRPC probes and
``grpc_health_probe`` see what ``/readyz`` and ``/v2/models/{name}/ready`` see.

SERVING when ready; NOT_SERVING while loading or shutting down; an unknown service name:
NOT_FOUND on Check and SERVICE_UNKNOWN on Watch, as the health checking protocol says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.state import ServiceState

SERVICE = "grpc.health.v1.Health"

#: Seconds between two looks at the state while a Watch stream is open.
WATCH_INTERVAL_S = 0.5

Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def status(self, service: str) -> int | None:
        """The serving status of ``service`` ("" the server, else a model); None: unknown."""
        state = self.state
        if service == "":
            ready = state.ready
        else:
            served = state.repository.models.get(service)
            if served is None:
                return None
            ready = served.ready and not state.shutting_down
        return (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self.status(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:128]!r}"
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        last: int | None = -1
        while True:
            status = self.status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(WATCH_INTERVAL_S)
