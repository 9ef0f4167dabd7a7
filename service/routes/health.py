"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import State
from service.serving.inference import model_ref

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 while the process lives")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="200 once every model found has been read and the default one is served, else 503",
)
async def readyz(state: State) -> JSONResponse:
    repository = state.repository
    if state.shutting_down:
        return JSONResponse({"detail": "shutting down"}, status_code=503)
    default = repository.default
    model = default.default_version() if default is not None else None
    if model is None or not state.ready:
        detail = repository.no_model_help(repository.default_name)
        if model is not None:  # the default is served; other models are still loading
            loading = [n for n, m in repository.models.items() if not m.store.scanned]
            detail = f"loading models: {', '.join(loading) or 'the repository'}"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})
    body: dict[str, object] = {"status": "ready", "model": model_ref(model)}
    problem = default.store.repository_problem if default is not None else None
    if problem is not None:
        body["warning"] = f"{problem}; serving the loaded version"
    return JSONResponse(body)
