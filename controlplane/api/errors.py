"""Kuma's API error shape: {"title", "details", "invalid_parameters": [{"field", "reason"}]}."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from controlplane.resources.errors import InvalidParameter, ResourceValidationError
from controlplane.store.base import (
    AlreadyExists,
    Conflict,
    MeshNotFound,
    NotFound,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("kuma.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)


def error_response(status: int, title: str, details: str = "",
                   invalid: list[InvalidParameter] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = {"title": title, "details": details or title,
            "invalid_parameters": [p.as_dict() for p in invalid or []]}
    return web.json_response(body, status=status, headers=headers)


class ApiError(Exception):
    """Raised by handlers for a client mistake that is not a resource validation error."""

    def __init__(self, status: int, title: str, details: str = "",
                 invalid: list[InvalidParameter] | None = None) -> None:
        super().__init__(details or title)
        self.status, self.title, self.details, self.invalid = status, title, details, invalid

    def response(self) -> web.Response:
        return error_response(self.status, self.title, self.details, self.invalid)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except ResourceValidationError as e:
        return web.json_response(e.as_api_error(), status=400)
    except MeshNotFound as e:
        return error_response(400, "Resource is not valid", str(e), [InvalidParameter("mesh", str(e))])
    except NotFound as e:
        return error_response(404, "Not found", str(e))
    except AlreadyExists as e:
        return error_response(409, "Already exists", str(e))
    except Conflict as e:
        return error_response(409, "Conflict", str(e))
    except StoreUnavailable as e:
        log.error("store unavailable", extra={"path": request.path, "error": str(e)})
        return error_response(503, "Store unavailable", str(e))
    except StoreError as e:
        return error_response(400, "Store error", str(e))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app.get(MAX_BODY_BYTES, 0)
        return error_response(413, "Request body too large",
                              f"the body is larger than the {limit} bytes this API accepts "
                              "(apiServer.maxBodyBytes): split it up")
    except web.HTTPException as e:
        if e.status >= 400:
            return error_response(e.status, e.reason, e.text or e.reason)
        raise
    except Exception:
        log.exception("unhandled error in API handler", extra={"method": request.method, "path": request.path})
        return error_response(500, "Internal error", "the control plane hit an unexpected error; see its log")
