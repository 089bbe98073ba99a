"""The Open Inference Protocol v2: server and model metadata, health, readiness, and tensor inference."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kubedistill.core.version import __version__
from kubedistill.serve import protocol
from kubedistill.serve.protocol import ServeError
from kubedistill.serve.state import ServeState
from kubedistill.serve.uploads import media_type, read_body


def v2_router(state: ServeState) -> APIRouter:
    router = APIRouter()

    @router.get("/v2")
    async def v2_server_metadata():
        return protocol.ServerMetadataResponse(name="kubedistill", version=__version__, extensions=[]).model_dump()

    @router.get("/v2/health/live")
    async def v2_live():
        if state.holder.error:
            return JSONResponse(
                {"live": False, "error": f"model '{state.model_name}' failed to load: {state.holder.error}"},
                status_code=400,
            )
        return {"live": True}

    def _ready_response(extra: dict) -> JSONResponse:
        if state.holder.ready:
            return JSONResponse(extra | {"ready": True})
        why = (
            f"model '{state.model_name}' failed to load: {state.holder.error}"
            if state.holder.error
            else f"model '{state.model_name}' is still loading"
        )
        return JSONResponse(extra | {"ready": False, "error": why}, status_code=400)  # spec: 4xx means false

    @router.get("/v2/health/ready")
    async def v2_ready():
        return _ready_response({})

    async def _model_ready(name: str, version: str | None = None):
        state.check_name(name)
        if state.holder.detector is not None:
            state.check_version(state.holder.detector, version)
        return _ready_response({"name": state.model_name})

    async def _model_metadata(name: str, version: str | None = None):
        state.check_name(name)
        det = state.holder.require()
        state.check_version(det, version)
        resp = protocol.ModelMetadataResponse(
            name=state.model_name,
            versions=[det.version] if det.version else None,
            platform=protocol.PLATFORM,
            # the batch dimension is variable here even for a fixed-batch file: the server runs bigger batches in chunks
            inputs=[
                protocol.MetadataTensor(
                    name=det.input_name, datatype=det.input_datatype, shape=[-1, *det.input_shape[1:]]
                )
            ],
            outputs=[protocol.MetadataTensor(name=det.output_name, datatype="FP32", shape=[-1, *det.output_shape[1:]])],
        )
        return resp.model_dump(exclude_none=True)

    async def _infer_endpoint(request: Request, name: str, version: str | None = None):
        state.check_name(name)
        det = state.holder.require()
        state.check_version(det, version)
        ctype = media_type(request)
        if ctype not in ("application/json", ""):
            raise ServeError(
                415, f"unsupported Content-Type '{ctype[:80]}'; send the inference request as application/json"
            )
        body = await read_body(request, state.max_bytes)

        def parse():
            req = protocol.parse_infer_request(body)
            outputs = protocol.requested_outputs(req, [det.output_name])
            dtypes = tuple(dict.fromkeys(("FP32", det.input_datatype)))
            return (
                req,
                outputs,
                protocol.input_tensor(req, det.input_name, dtypes, [-1, *det.input_shape[1:]], state.cfg.max_batch),
            )

        def work():
            req, outputs, batch = parse()
            return req, outputs, state.infer(det, batch)

        if state.batcher is None:
            req, outputs, raw = await state.run_work(work)
        else:
            with state.batcher.coming():
                req, outputs, batch = await state.run_work(parse)
            raw = await state.batcher.submit(batch)
        if not np.isfinite(raw).all():
            raise ServeError(400, "the model's output is not finite for this input; input values should be in 0..1")
        state.metrics.images.labels("/v2/models/{name}/infer").inc(len(raw))
        resp = {"model_name": state.model_name}
        if det.version:
            resp["model_version"] = det.version
        if req.id is not None:
            resp["id"] = req.id
        resp["outputs"] = [protocol.response_output(o, raw) for o in outputs]
        return JSONResponse(resp)

    # separate functions per path, so that `version` is a path parameter or absent (never a query one)
    async def model_metadata(name: str):
        return await _model_metadata(name)

    async def model_metadata_v(name: str, version: str):
        return await _model_metadata(name, version)

    async def model_ready(name: str):
        return await _model_ready(name)

    async def model_ready_v(name: str, version: str):
        return await _model_ready(name, version)

    async def infer(request: Request, name: str):
        return await _infer_endpoint(request, name)

    async def infer_v(request: Request, name: str, version: str):
        return await _infer_endpoint(request, name, version)

    router.add_api_route("/v2/models/{name}", model_metadata, methods=["GET"])
    router.add_api_route("/v2/models/{name}/versions/{version}", model_metadata_v, methods=["GET"])
    router.add_api_route("/v2/models/{name}/ready", model_ready, methods=["GET"])
    router.add_api_route("/v2/models/{name}/versions/{version}/ready", model_ready_v, methods=["GET"])
    router.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"])
    router.add_api_route("/v2/models/{name}/versions/{version}/infer", infer_v, methods=["POST"])

    return router
