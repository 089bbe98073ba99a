"""ONNX export of the end-to-end (NMS-free) detector, checked against torch before it is kept.

Graph: input `images` float32 [B, 3, S, S] in 0..1 (letterboxed RGB) -> output `detections`
[B, max_det, 6] = x1, y1, x2, y2 (input pixels), score, class, sorted by score. The one-to-many
branches are not in the graph. Metadata (ONNX metadata_props): names (JSON), imgsz, stride,
max_det, model version, source checkpoint sha256, kubedistill version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kubedistill.core.atomic import atomic_path
from kubedistill.core.digest import file_sha256
from kubedistill.core.errors import UserError
from kubedistill.core.version import __version__
from kubedistill.model.decode import head_boxes, topk_detections

# torch vs onnxruntime on the same input: score and box tolerances of the self-check
SCORE_ATOL = 1e-4
BOX_ATOL_PX = 0.05
# fp16 (--half): torch and onnxruntime round and accumulate differently; fp16 holds about 3 decimal digits
HALF_SCORE_ATOL = 2e-3
HALF_BOX_ATOL_PX = 0.25


class End2End(nn.Module):
    """Model + NMS-free decode as one module: images -> [B, max_det, 6]."""

    def __init__(self, model: nn.Module, max_det: int = 300):
        super().__init__()
        self.model = model.eval()
        self.model.set_eval_head(False)
        self.max_det = max_det

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)["one2one"]
        boxes, scores = head_boxes(out, (images.shape[2], images.shape[3]), self.model.strides)
        return topk_detections(boxes, scores, self.max_det)


def _sample_image(imgsz: int, seed: int = 0) -> np.ndarray:
    """A letterboxed demo image (shapes on clutter), float32 [1, 3, S, S] in 0..1, for the self-check."""
    from kubedistill.data.synth import SHAPES, _make_image

    rng = np.random.default_rng(seed)
    img, _, _ = _make_image(rng, imgsz, list(SHAPES[:4]))
    return (img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).copy()


def compare_detections(
    ref: np.ndarray,
    got: np.ndarray,
    min_score: float = 0.01,
    min_count: int = 20,
    score_atol: float = SCORE_ATOL,
    box_atol_px: float = BOX_ATOL_PX,
) -> str | None:
    """None if every reference detection above min_score (and at least the top `min_count`, so an
    untrained model with low scores is still checked) has a twin (same class, score within
    score_atol, box within box_atol_px) in `got`; else a description of the first mismatch.
    Matching by content, not position, so ties in score may come out in either order; a detection
    tied (within score_atol) with the lowest kept score may be swapped for its tie at the cut-off."""
    for b in range(ref.shape[0]):
        cand = got[b]
        cutoff = cand[:, 4].min() + score_atol if len(cand) else -np.inf
        scores = ref[b][:, 4]
        floor = min(min_score, np.sort(scores)[-min(min_count, len(scores))]) if len(scores) else min_score
        for det in ref[b][(scores >= floor) & (scores > cutoff)]:
            ok = (
                (cand[:, 5] == det[5])
                & (np.abs(cand[:, 4] - det[4]) <= score_atol)
                & (np.abs(cand[:, :4] - det[:4]).max(1) <= box_atol_px)
            )
            if not ok.any():
                j = np.abs(cand[:, 4] - det[4]).argmin()
                return f"image {b}: torch detection {np.round(det, 4).tolist()} has no ONNX twin (closest {np.round(cand[j], 4).tolist()})"
    return None


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter notes that torchvision's ops are not registered (kubedistill does not use them) and warns
    about its own pytree internals on every export: neither is for the user, and both filled the pipeline logs."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def export_onnx(
    weights: str | Path,
    out: str | Path | None = None,
    *,
    imgsz: int | None = None,
    dynamic: bool = False,
    half: bool = False,
    max_det: int = 300,
    opset: int = 18,
    device: str = "",
) -> dict:
    """Export a checkpoint; returns {"path", "imgsz", "max_det", "max_abs_score_diff", ...}. Raises on a mismatch."""
    import onnx
    import onnxruntime as ort

    from kubedistill.core.device import select_device
    from kubedistill.model.checkpoint import load_model

    if not 1 <= int(max_det) <= 10_000:
        raise UserError(f"--max-det {max_det} is out of range", "Use 1 to 10000 detections per image (default 300)")
    model, ckpt = load_model(weights)
    imgsz = int(imgsz or ckpt["train_args"]["imgsz"])
    if imgsz % 32:
        raise UserError(f"--imgsz {imgsz} is not a multiple of 32", f"Use {max(32, round(imgsz / 32) * 32)}")
    dev = select_device(device)
    out = Path(out) if out else Path(weights).with_suffix(".onnx")
    if out.is_dir():  # --out names a folder: the model goes inside it
        out = out / Path(weights).with_suffix(".onnx").name
    wrapper = End2End(model, max_det).to(dev).eval()
    dtype = torch.float16 if half else torch.float32
    wrapper = wrapper.to(dtype)
    x = torch.from_numpy(_sample_image(imgsz)).to(dev, dtype)
    dyn = {"images": {0: torch.export.Dim("batch", min=1, max=256)}} if dynamic else None
    x_trace = x.repeat(2, 1, 1, 1) if dynamic else x
    with atomic_path(out) as tmp, torch.no_grad(), _quiet_exporter():
        prog = torch.onnx.export(
            wrapper,
            (x_trace,),
            None,
            input_names=["images"],
            output_names=["detections"],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes=dyn,
            verbose=False,
        )
        prog.save(str(tmp))
        ref = wrapper(x_trace).float().cpu().numpy()
        m = onnx.load(str(tmp))
        meta = {
            "names": json.dumps(list(model.names)),
            "imgsz": str(imgsz),
            "stride": str(max(model.strides)),
            "max_det": str(max_det),
            "model": f"yolo26{model.scale}",
            "model_version": str(ckpt.get("date", "")),
            "source_sha256": file_sha256(weights),
            "kubedistill_version": __version__,
            "output": "detections[B, max_det, 6] = x1, y1, x2, y2 (input pixels), score, class",
        }
        del m.metadata_props[:]
        for k, v in meta.items():
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        feed = x_trace.float().cpu().numpy().astype(np.float16 if half else np.float32)
        got = sess.run(None, {"images": feed})[0].astype(np.float32)
        tol = (HALF_SCORE_ATOL, HALF_BOX_ATOL_PX) if half else (SCORE_ATOL, BOX_ATOL_PX)
        problem = (
            compare_detections(ref, got, score_atol=tol[0], box_atol_px=tol[1])
            if got.shape == ref.shape
            else f"shape {got.shape} vs {ref.shape}"
        )
        if problem:  # leaving the block by an exception discards the temporary file
            raise UserError(
                f"ONNX export of '{weights}' does not match torch ({problem})",
                "Report this with the checkpoint; the ONNX file was not kept",
            )
    top = ref[..., 4] >= np.minimum(0.01, np.sort(ref[..., 4], axis=-1)[..., -min(20, ref.shape[1]), None])
    return {
        "path": str(out),
        "imgsz": imgsz,
        "max_det": max_det,
        "dynamic": dynamic,
        "half": half,
        "opset": opset,
        "checked_detections": int(top.sum()),
        "score_atol": tol[0],
        "box_atol_px": tol[1],
        "metadata": meta,
    }
