"""A FastAPI route that hands its endpoint the request as is: no dependency solving, no
parameter validation, no response serialisation.

For routes whose endpoint reads the request itself (the body, the query string) and returns a
finished ``Response``: FastAPI's request handler (resolving dependencies, validating
parameters, then checking the return value) cost about a sixth of ``/predict``'s event-loop CPU
for nothing (BENCHMARKS.md, "Per-request CPU budget"). The route is still an ``APIRoute``, so
it is documented in the OpenAPI schema from its signature and ``openapi_extra`` as before.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class DirectRoute(APIRoute):
    """Calls ``endpoint(request=request, **path_params)``; path parameters arrive as the
    strings the router matched (declare them ``str``), everything else the endpoint reads from
    the request. Exceptions propagate to the app's exception handlers as usual."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request=request, **request.path_params)
            return response

        return handler
