"""``GET /models``: versions on disk, their states, and the serving one's metadata."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from service.deps import get_state
from service.state import ServiceState

router = APIRouter(tags=["models"])
State = Annotated[ServiceState, Depends(get_state)]


@router.get("/models", summary="Published versions and the serving one")
async def list_models(state: State) -> dict[str, Any]:
    store = state.store
    current = store.current
    return {
        "name": state.settings.model_name,
        "serving": None
        if current is None
        else current.metadata.model_dump(mode="json", exclude={"files"}),
        "versions": [
            {
                "version": row.version,
                "state": row.state,
                **({"reason": row.reason} if row.reason else {}),
            }
            for row in store.statuses()
        ],
        "repository_problem": store.repository_problem,
    }
