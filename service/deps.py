"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    """The per-app state the lifespan built (``app.state.service``).

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    hop per request that cost about a quarter of /predict's throughput (see BENCHMARKS.md).
    """
    state: ServiceState = request.app.state.service
    return state


def state_of(request: Request) -> ServiceState:
    """The same state, for routes that read the request themselves (no dependency solving)."""
    state: ServiceState = request.app.state.service
    return state


#: The route parameter that receives the per-app state: ``state: State``.
State = Annotated[ServiceState, Depends(get_state)]
