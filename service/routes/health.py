"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.deps import get_state
from service.inference import model_ref
from service.routes.predict import NO_MODEL_HELP
from service.state import ServiceState

router = APIRouter(tags=["health"])
State = Annotated[ServiceState, Depends(get_state)]


@router.get("/healthz", summary="200 while the process lives")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 once a model is loaded and warmed up, else 503")
async def readyz(state: State) -> JSONResponse:
    model = state.store.current
    problem = state.store.repository_problem
    if state.shutting_down:
        return JSONResponse({"detail": "shutting down"}, status_code=503)
    if model is None or not state.ready:
        detail = NO_MODEL_HELP if problem is None else f"{NO_MODEL_HELP}; {problem}"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})
    body: dict[str, object] = {"status": "ready", "model": model_ref(model)}
    if problem is not None:
        body["warning"] = f"{problem}; serving the loaded version"
    return JSONResponse(body)
