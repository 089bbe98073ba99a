"""The try-it page, its sample image and the Prometheus metrics: GET /, GET /demo.jpg, GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from kubedistill.serve.page import DEMO_SIZE, demo_image_bytes, page_html
from kubedistill.serve.state import ServeState


def page_router(state: ServeState) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @router.get("/demo.jpg", include_in_schema=False)
    async def demo_jpg():
        det = state.holder.detector
        data = await state.run_work(demo_image_bytes, det.imgsz if det else DEMO_SIZE)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @router.get("/metrics", include_in_schema=False)
    async def prom_metrics():
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    return router
