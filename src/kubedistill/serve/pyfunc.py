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

from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.data.images import decode_image, read_image
from kubedistill.serve.model import OnnxDetector

try:  # the class must subclass PythonModel to be logged; importing this module without mlflow still works
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is installed wherever a pyfunc is logged or loaded
    PythonModel = object


def pyfunc_signature():
    """Inputs are free-form (arrays, paths, bytes); the params `conf` and `max_det` are declared so MLflow passes them."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(
        inputs=None,
        outputs=None,
        params=ParamSchema([ParamSpec("conf", "float", 0.25), ParamSpec("max_det", "long", 300)]),
    )


COLUMNS = ["image", "class_id", "class_name", "score", "x1", "y1", "x2", "y2"]


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

    def predict(self, context, model_input, params: dict | None = None):
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
