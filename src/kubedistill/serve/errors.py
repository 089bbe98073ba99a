"""The server's error handlers, shared by every route: every error is JSON {"error": "..."}."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubedistill.serve.protocol import ServeError

log = logging.getLogger("kubedistill.serve")


async def _serve_error(request: Request, exc: ServeError):
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException):
    msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and msg == "Not Found":
        msg = f"no such endpoint: {request.url.path[:200]}"
    elif exc.status_code == 405:
        msg = f"method {request.method} is not allowed on {request.url.path[:200]}"
    return JSONResponse({"error": msg}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError):
    errs = exc.errors()[:3]
    msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errs)
    return JSONResponse({"error": f"invalid request: {msg}"}, status_code=400)


async def _internal_error(request: Request, exc: Exception):  # a bug: logged, answered as JSON
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal server error ({exc.__class__.__name__})"}, status_code=500)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
