"""The registered student as an MLflow pyfunc: it runs the exported ONNX model with onnxruntime (no torch).

    model = mlflow.pyfunc.load_model("models:/NAME@champion")
    dets = model.predict(images)

`images` is one RGB uint8 HxWx3 array, an NxHxWx3 array, a list of arrays, image paths or encoded image
bytes, or a pandas DataFrame with an `image` column holding any of those. The result is a DataFrame with
one row per detection: image (index into the input), class_id, class_name, score, x1, y1, x2, y2 (pixels of
the original image). `params={"conf": 0.25, "max_det": 100}` change the threshold and the cap.
The `.pt` checkpoint sits beside the ONNX file in the model's artifacts (`artifacts/checkpoint`).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.data.images import decode_image, read_image
from kubedistill.serve.model import OnnxDetector

try:  # the class must subclass PythonModel to be logged; importing this module without mlflow still works
    import pandas as pd  # MLflow's dependency; the predict type hints name it
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is installed wherever a pyfunc is logged or loaded
    PythonModel = object


COLUMNS = ["image", "class_id", "class_name", "score", "x1", "y1", "x2", "y2"]


def _is_base64(text: str) -> bool:
    """An encoded image in base64 (how MLflow's JSON input carries a binary column), not a file path: its first
    bytes decode to a JPEG, PNG, BMP or WebP signature."""
    compact = "".join(text[:256].split())
    if len(compact) < 64:
        return False
    try:
        head = base64.b64decode(compact[:64], validate=True)
    except ValueError:
        return False
    return head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:2] == b"BM" or head[:4] == b"RIFF"


def to_images(data: Any) -> list[np.ndarray]:
    """Whatever `predict` was given -> a list of RGB uint8 HxWx3 arrays."""

    if hasattr(data, "columns"):  # pandas DataFrame
        if "image" not in data.columns:
            raise ValueError(f"predict() got a DataFrame with columns {list(data.columns)}; it needs an 'image' column")
        data = list(data["image"])
    if isinstance(data, np.ndarray):
        if data.ndim == 3:
            data = [data]
        elif data.ndim == 4:
            data = list(data)
        elif data.dtype == object:
            data = list(data)
        else:
            raise ValueError(f"predict() got an array of shape {data.shape}; pass HxWx3 or NxHxWx3 RGB uint8")
    if isinstance(data, (str, Path, bytes)):
        data = [data]
    out = []
    for i, item in enumerate(data):
        if isinstance(item, (bytes, bytearray)):
            out.append(decode_image(bytes(item), f"<image {i}>"))
        elif isinstance(item, str) and _is_base64(item):  # bytes as MLflow's JSON serving input carries them
            out.append(decode_image(base64.b64decode(item), f"<image {i}>"))
        elif isinstance(item, (str, Path)):
            out.append(read_image(item))
        else:
            arr = np.asarray(item)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"image {i} has shape {arr.shape}; pass RGB HxWx3")
            out.append(arr.astype(np.uint8, copy=False))
    return out


class OnnxDetectorModel(PythonModel):
    """pyfunc wrapper around `kubedistill.serve.model.OnnxDetector`."""

    def load_context(self, context) -> None:

        self.detector = OnnxDetector(context.artifacts["onnx"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Detections of the images in `model_input` (a DataFrame with an `image` column, or any form `to_images`
        takes). The DataFrame hint tells MLflow the input form without asking it to check the data."""
        import pandas as pd

        params = params or {}
        images = to_images(model_input)
        dets = self.detector.detect(
            images,
            conf=float(params.get("conf", 0.25)),
            max_det=int(params["max_det"]) if params.get("max_det") else None,
        )
        names = self.detector.names
        rows = []
        for i, d in enumerate(dets):
            for box, score, cls in zip(d.boxes.tolist(), d.scores.tolist(), d.classes.tolist()):
                cls = int(cls)
                rows.append([i, cls, names[cls] if 0 <= cls < len(names) else str(cls), float(score), *map(float, box)])
        return pd.DataFrame(rows, columns=COLUMNS)
