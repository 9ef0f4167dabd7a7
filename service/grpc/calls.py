"""What every gRPC method shares: its id, API key, error table, metrics and cancellation.

:func:`rpc` wraps a servicer method. The method gets a :class:`GrpcCall` (the data plane's
:class:`~service.dataplane.Call`) and raises the serving core's errors; the wrapper answers them
with the gRPC status of the one error table (:data:`service.http.errors.ANSWERS`), counts the
call in ``imgcls_requests_total`` / ``imgcls_request_duration_seconds`` with ``route`` = the
full method name and ``code`` = the status name, and counts refusals in
``imgcls_rejected_requests_total`` as the HTTP side does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from service.feedback.ids import new_request_id, sane_request_id
from service.http.auth import MISSING_KEY, key_allowed, key_offered
from service.http.errors import answer_for
from service.serving.errors import InvalidInput, ServingError
from service.serving.model_store import LoadedModel
from service.state import ServiceState

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Metadata key of the call's id: the client's when sane, else a new one; sent back in the
#: trailing metadata (HTTP's ``X-Request-Id``).
REQUEST_ID_KEY = "x-request-id"


class GrpcCall:
    """One gRPC call as the data plane sees it (:class:`service.dataplane.Call`)."""

    __slots__ = ("context", "model", "request_id")

    def __init__(self, context: grpc.aio.ServicerContext, request_id: str) -> None:
        self.context = context
        self.request_id = request_id
        self.model: tuple[str, str] = ("", "")

    def record_model(self, model: LoadedModel) -> None:
        self.model = (model.name, str(model.version))

    def time_left_s(self) -> float | None:
        return self.context.time_remaining()

    async def unless_gone(self, work: Awaitable[T]) -> T:
        # grpc.aio cancels the method's task when the client cancels or its deadline passes:
        # the cancellation reaches the batcher, which drops the call's queued images.
        return await work


Method = Callable[[Any, Any, GrpcCall], Awaitable[Any]]


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }


def rpc(described: MethodDescriptor, *, needs_key: bool = False) -> Callable[[Method], Any]:
    """Wrap a servicer method ``async def m(self, request, call)`` as ``(request, context)``.

    The wrapped method takes the request's bytes (registered by :func:`add_servicer`) and
    parses them itself, so that a message that does not parse is INVALID_ARGUMENT saying so,
    counted like any other refusal.

    Args:
        described: The proto's method (``route`` label: ``/package.Service/Method``).
        needs_key: The method is an inference method: with ``IMGCLS_API_KEYS`` set it needs a
            key in the ``x-api-key`` or ``authorization: Bearer`` metadata (UNAUTHENTICATED).
    """
    full_name = f"/{described.containing_service.full_name}/{described.name}"
    request_class = message_factory.GetMessageClass(described.input_type)

    def wrap(method: Method) -> Any:
        @functools.wraps(method)
        async def handler(self: Any, data: bytes, context: grpc.aio.ServicerContext) -> Any:
            state: ServiceState = self.state
            started = time.perf_counter()
            metadata = _metadata(context)
            call = GrpcCall(
                context, sane_request_id(metadata.get(REQUEST_ID_KEY)) or new_request_id()
            )
            code = "OK"
            try:
                if needs_key and not key_allowed(
                    key_offered(metadata.get("x-api-key", ""), metadata.get("authorization", "")),
                    state.settings.api_keys,
                ):
                    code = "UNAUTHENTICATED"
                    state.metrics.rejected_request("unauthorized")
                    await _abort(context, call, grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)
                try:
                    request = request_class.FromString(data)
                except DecodeError:
                    raise InvalidInput(
                        f"the request is not a valid {described.input_type.full_name} message "
                        f"({len(data)} bytes): truncated or not protobuf"
                    ) from None
                answer = await method(self, request, call)
                context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
                return answer
            except ServingError as exc:
                answer_kind = answer_for(exc)
                code = answer_kind.grpc
                if answer_kind.reason is not None and not exc.counted:
                    state.metrics.rejected_request(answer_kind.reason)
                await _abort(context, call, grpc.StatusCode[code], exc.detail)
            except asyncio.CancelledError:
                # The client cancelled, or its deadline passed: nothing more is computed.
                code = "DEADLINE_EXCEEDED" if _deadline_passed(context) else "CANCELLED"
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                code = "INTERNAL"
                logger.exception("unhandled error in %s", full_name)
                await _abort(
                    context,
                    call,
                    grpc.StatusCode.INTERNAL,
                    f"internal error ({type(exc).__name__}); see the service log",
                )
            finally:
                model, version = call.model
                state.metrics.request_finished(
                    full_name, code, model, version, time.perf_counter() - started
                )

        handler.rpc_method = described  # type: ignore[attr-defined]
        return handler

    return wrap


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    left = context.time_remaining()
    return left is not None and left <= 0


async def _abort(
    context: grpc.aio.ServicerContext, call: GrpcCall, code: grpc.StatusCode, detail: str
) -> None:
    context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
    await context.abort(code, detail)


def _methods(service: ServiceDescriptor) -> list[MethodDescriptor]:
    return [service.methods_by_name[name] for name in service.methods_by_name]


def add_servicer(server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor) -> None:
    """Serve the methods of ``service`` that ``servicer`` implements with :func:`rpc`; the
    others answer UNIMPLEMENTED (gRPC's own answer for a method it does not know)."""
    handlers = {}
    for described in _methods(service):
        handler = getattr(servicer, described.name, None)
        marked = getattr(handler, "rpc_method", None)
        if marked is None or marked.full_name != described.full_name:
            continue
        response_class = message_factory.GetMessageClass(described.output_type)
        handlers[described.name] = grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=None,  # bytes: parsed by the rpc wrapper
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
