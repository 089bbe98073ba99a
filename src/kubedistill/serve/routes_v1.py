"""The simple protocol: GET /v1/model, POST /v1/detect (multipart, JSON base64 or a raw image body -> detections)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kubedistill.serve import protocol
from kubedistill.serve.protocol import ServeError
from kubedistill.serve.state import ServeState
from kubedistill.serve.uploads import IMAGE_MEDIA, decode_upload, media_type, read_body


def v1_router(state: ServeState) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/model")
    async def v1_model():
        det = state.holder.require()
        return det.info() | {"name": state.model_name, "path": Path(det.path).name}

    @router.post("/v1/detect")
    async def v1_detect(request: Request):
        det = state.holder.require()
        ctype = media_type(request)
        accepted = ("multipart/form-data", "application/json") + IMAGE_MEDIA
        if ctype not in accepted and not ctype.startswith("image/"):
            raise ServeError(
                415,
                f"unsupported Content-Type '{ctype[:80] or '(none)'}'; send multipart/form-data (image files), "
                'application/json ({"images": [base64, ...]}) or a raw image body (image/jpeg, image/png, ...)',
            )
        fields = dict(request.query_params)
        body = await read_body(request, state.max_bytes)
        blobs: list[tuple[str, bytes]] = []
        if ctype == "multipart/form-data":

            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            form = await Request(request.scope, replay).form(max_files=2 * state.cfg.max_images + 8, max_fields=16)
            try:
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        fields[key] = value
                    else:
                        blobs.append((value.filename or key, await value.read()))
            finally:
                await form.close()
            if not blobs:
                raise ServeError(
                    400, "no image file in the form; attach images as file parts, e.g. -F images=@photo.jpg"
                )
        elif ctype == "application/json":
            obj = protocol.load_json(body)
            if not isinstance(obj, dict):
                raise ServeError(400, 'JSON body must be an object {"images": [base64, ...]}')
            unknown = set(obj) - {"images", "image", "conf", "max_det"}
            if unknown:
                raise ServeError(400, f"unknown field(s) {sorted(unknown)[:5]}; use images, conf, max_det")
            imgs = obj.get("images", [obj["image"]] if "image" in obj else None)
            if not isinstance(imgs, list) or not imgs:
                raise ServeError(400, "'images' must be a non-empty list of base64-encoded images")
            if len(imgs) > state.cfg.max_images:
                raise ServeError(413, f"{len(imgs)} images in one request; the limit is {state.cfg.max_images}")
            blobs = [(f"images[{i}]", protocol.decode_base64_image(v, i)) for i, v in enumerate(imgs)]
            fields.update({k: obj[k] for k in ("conf", "max_det") if k in obj})
        else:
            blobs = [("image", body)]
        if len(blobs) > state.cfg.max_images:
            raise ServeError(413, f"{len(blobs)} images in one request; the limit is {state.cfg.max_images}")
        conf = protocol.parse_conf(fields["conf"]) if "conf" in fields else 0.25
        max_det = min(protocol.parse_max_det(fields["max_det"]), det.max_det) if "max_det" in fields else det.max_det

        def prepare() -> tuple[list, np.ndarray]:
            preps = []
            left = state.cfg.max_request_pixels  # all images together: 32 of 40 MP each took seconds of both cores
            for i, (label, data) in enumerate(blobs):
                ti = time.perf_counter()
                what = f"image {i} ('{label[:80]}')" if len(blobs) > 1 or label != "image" else "the request body"
                img = decode_upload(data, what, state.cfg.max_image_pixels, left)
                left -= img.shape[0] * img.shape[1]
                preps.append(det.prepare(img))
                state.metrics.preprocess.observe(time.perf_counter() - ti)
            return preps, np.stack([p.tensor for p in preps])

        def work() -> tuple[list, np.ndarray, list[float]]:  # all of it on one thread: one hop from the event loop
            t0 = time.perf_counter()
            preps, x = prepare()
            t1 = time.perf_counter()
            return preps, state.infer(det, x), [t0, t1, time.perf_counter()]

        if state.batcher is None:
            preps, raw, (t0, t1, t2) = await state.run_work(work)
        else:  # decode here, then wait for a batch (the timing's "inference" includes that wait)
            t0 = time.perf_counter()
            with state.batcher.coming():
                preps, x = await state.run_work(prepare)
            t1 = time.perf_counter()
            raw = await state.batcher.submit(x)
            t2 = time.perf_counter()
        dets = [det.postprocess(r, p, conf, max_det) for r, p in zip(raw, preps)]
        ms = {
            "preprocess": (t1 - t0) * 1e3,
            "inference": (t2 - t1) * 1e3,
            "postprocess": (time.perf_counter() - t2) * 1e3,
        }
        timings = {k: round(v, 3) for k, v in ms.items()}
        state.metrics.images.labels("/v1/detect").inc(len(dets))
        results = [
            {"index": i, "file": label, "width": d.width, "height": d.height, "detections": d.to_json(det.names)}
            for i, ((label, _), d) in enumerate(zip(blobs, dets))
        ]
        return JSONResponse(
            {
                "model_name": state.model_name,
                "model_version": det.version,
                "conf": conf,
                "max_det": max_det,
                "results": results,
                "timings_ms": timings,
            }
        )

    return router
