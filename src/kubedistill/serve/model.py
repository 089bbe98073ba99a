"""The served model: an onnxruntime session around an exported end-to-end detector. Never imports torch or OpenCV.

`OnnxDetector` loads the file written by `kubedistill export` (input `images` [B, 3, S, S] float 0..1,
letterboxed RGB; output `detections` [B, K, 6] = x1, y1, x2, y2 in input pixels, score, class,
sorted by score), reads its metadata and does what `kubedistill predict` does with torch:

    decode (bytes -> RGB uint8, EXIF applied; Pillow)  ->  letterbox to S (kubedistill.data.letterbox, the
    training code; numpy resize)  ->  /255, CHW  ->  session.run  ->  keep score > conf, first max_det  ->  map boxes
    back to the original image (scale_boxes_to_original) and clip.

One session is shared by all requests (onnxruntime's `run` is thread-safe); `threads` sets its
intra-op thread count.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kubedistill.core.errors import UserError
from kubedistill.data.letterbox import letterbox, scale_boxes_to_original

_ORT_TYPES = {"tensor(float)": ("FP32", np.float32), "tensor(float16)": ("FP16", np.float16)}


def default_threads(workers: int = 1) -> int:
    """CPU cores this process may use, shared between `workers` processes (at least 1 each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


@dataclass
class Detections:
    """Detections of one image: boxes xyxy in original pixels [n, 4], scores [n], class ids [n]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    width: int = 0
    height: int = 0
    timings: dict = field(default_factory=dict)

    def to_json(self, names: list[str]) -> list[dict]:
        out = []
        for (x1, y1, x2, y2), s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist()):
            c = int(c)
            out.append(
                {
                    "class_id": c,
                    "class_name": names[c] if 0 <= c < len(names) else str(c),
                    "score": round(float(s), 6),
                    "box": [round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3)],
                }
            )
        return out


@dataclass
class Prepared:
    """A letterboxed image ready for the model and what is needed to map boxes back."""

    tensor: np.ndarray  # [3, S, S] float 0..1
    ratio: float
    pad: tuple[float, float]
    shape: tuple[int, int]  # original (h, w)


def _dim(d) -> int:
    return int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else -1


def session_options(threads: int):
    """The server's onnxruntime session options (benchmarks time other files with the same ones)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # worker threads still spin inside a run (parking them made the model 20% slower here), but stop as
    # soon as it returns, leaving the cores to decoding, HTTP and JSON (docs/benchmarks.md)
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


class OnnxDetector:
    """An exported kubedistill detector in onnxruntime. See the module docstring."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.threads = int(threads) if threads else default_threads()
        opts = session_options(self.threads)
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise UserError(
                f"Model '{self.path}' cannot be loaded by onnxruntime ({first[:300]})",
                "Check that it is a complete .onnx file written by `kubedistill export`",
            ) from None
        self.load_seconds = time.perf_counter() - t0
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) < 1 or len(outputs[0].shape) != 3:
            raise UserError(
                f"Model '{self.path}' is not a kubedistill detector (one [B,3,S,S] input, a [B,K,6] output)",
                "Export it with `kubedistill export`",
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        if inputs[0].type not in _ORT_TYPES:
            raise UserError(f"Model '{self.path}' takes {inputs[0].type} input", "Export a float32 or float16 model")
        self.input_datatype, self.input_dtype = _ORT_TYPES[inputs[0].type]
        self.input_shape = [_dim(d) for d in inputs[0].shape]
        self.output_shape = [_dim(d) for d in outputs[0].shape]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.imgsz = int(meta.get("imgsz") or self.input_shape[2])
        if self.input_shape[1] not in (3, -1) or self.imgsz <= 0 or self.output_shape[2] not in (6, -1):
            raise UserError(
                f"Model '{self.path}' has input {self.input_shape} / output {self.output_shape}",
                "Serve a model written by `kubedistill export`",
            )
        self.stride = int(meta.get("stride") or 32)
        self.max_det = int(meta.get("max_det") or (self.output_shape[1] if self.output_shape[1] > 0 else 300))
        try:
            names = json.loads(meta.get("names", "[]"))
            self.names = (
                [str(n) for n in names]
                if isinstance(names, list)
                else [str(v) for _, v in sorted(names.items(), key=lambda kv: int(kv[0]))]
            )
        except (ValueError, AttributeError, TypeError):
            self.names = []
        self.arch = meta.get("model", "")
        self.version = meta.get("model_version", "")
        self.sha256 = meta.get("source_sha256", "")
        # a fixed batch dimension (the default export: 1) means bigger batches run in chunks
        self.fixed_batch = self.input_shape[0] if self.input_shape[0] > 0 else None

    # -- metadata -------------------------------------------------------------------------
    def info(self) -> dict:
        return {
            "path": str(self.path),
            "model": self.arch,
            "model_version": self.version,
            "source_sha256": self.sha256,
            "names": list(self.names),
            "imgsz": self.imgsz,
            "stride": self.stride,
            "max_det": self.max_det,
            "input": {"name": self.input_name, "datatype": self.input_datatype, "shape": self.input_shape},
            "output": {"name": self.output_name, "datatype": "FP32", "shape": self.output_shape},
            "dynamic_batch": self.fixed_batch is None,
            "threads": self.threads,
            "kubedistill_version": self.metadata.get("kubedistill_version", ""),
        }

    # -- pipeline -------------------------------------------------------------------------
    def prepare(self, img: np.ndarray) -> Prepared:
        """RGB uint8 HxWx3 -> letterboxed [3, S, S] float 0..1 (same letterbox as training and predict)."""
        lb, ratio, pad = letterbox(img, self.imgsz)
        x = np.ascontiguousarray(lb.transpose(2, 0, 1)).astype(np.float32) / 255.0
        return Prepared(x, ratio, pad, (int(img.shape[0]), int(img.shape[1])))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] float -> raw detections [B, K, 6] float32 (input pixels). Thread-safe."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        step = self.fixed_batch or len(batch)
        if step == len(batch):
            return self._run(batch)
        return np.concatenate([self._run(batch[i : i + step]) for i in range(0, len(batch), step)], 0)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def postprocess(
        self, raw: np.ndarray, prep: Prepared, conf: float = 0.25, max_det: int | None = None
    ) -> Detections:
        """One image's raw [K, 6] -> detections with score > conf (at most max_det, best first) in original pixels."""
        d = raw[raw[:, 4] > conf]
        if max_det is not None:
            d = d[: max(0, int(max_det))]
        boxes = scale_boxes_to_original(d[:, :4].copy(), prep.ratio, prep.pad, prep.shape)
        return Detections(
            boxes=boxes,
            scores=d[:, 4].copy(),
            classes=d[:, 5].astype(np.int64),
            width=prep.shape[1],
            height=prep.shape[0],
        )

    def detect(self, images: list[np.ndarray], conf: float = 0.25, max_det: int | None = None) -> list[Detections]:
        """RGB uint8 images -> detections in each image's pixels (what `kubedistill predict` returns)."""
        if not images:
            return []
        preps = [self.prepare(im) for im in images]
        raw = self.run(np.stack([p.tensor for p in preps]))
        return [self.postprocess(r, p, conf, max_det) for r, p in zip(raw, preps)]
