"""Python API with the CLI's names: Detector("yolo26n").train(data=..., epochs=...), .val(), .predict()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.config import TrainConfig, check_infer_options, train_config
from kubedistill.core.errors import UserError
from kubedistill.train import build_trainer


class Detector:
    """A detector from a scale name (untrained) or a checkpoint path (trained)."""

    def __init__(self, model: str = "yolo26n"):
        from kubedistill.model.checkpoint import load_model
        from kubedistill.model.yolo import DetectionModel, parse_scale

        self.source = model
        self.ckpt: dict | None = None
        if str(model).endswith(".pt"):
            self.model, self.ckpt = load_model(model)
        else:
            self.model = DetectionModel(parse_scale(model), nc=80)
        self.results: dict | None = None

    @property
    def names(self) -> list[str]:
        return list(self.model.names)

    def _imgsz(self, imgsz: int | None) -> int:
        if imgsz:
            return imgsz
        if self.ckpt is not None:
            return int(self.ckpt["train_args"]["imgsz"])
        return 640

    def train(self, cfg: str | Path | dict | None = None, **kwargs: Any) -> dict:
        """Train (or fine-tune, when built from a checkpoint); afterwards this Detector holds best.pt."""
        from kubedistill.model.checkpoint import load_model

        kwargs.setdefault("model", self.source)
        conf: TrainConfig = train_config(cfg, **kwargs)
        self.results = build_trainer(conf).train()
        best = Path(self.results["best"])
        if best.is_file():
            self.model, self.ckpt = load_model(best)
            self.source = str(best)
        return self.results

    def val(self, data: str | None = None, imgsz: int | None = None, batch: int = 16, device: str = "", **kw) -> dict:
        """COCO metrics on `data` (default: the dataset the checkpoint was trained on); keywords of `run_val`."""
        from kubedistill.eval.run import run_val

        check_infer_options(
            imgsz=imgsz, batch=batch, **{k: kw[k] for k in ("conf", "iou", "max_det", "workers") if k in kw}
        )
        if data is None:
            if self.ckpt is None or not self.ckpt["train_args"].get("data"):
                raise UserError("No dataset to validate on", "Pass data=path/to/data.yaml (--data on the command line)")
            data = self.ckpt["train_args"]["data"]
        return run_val(self.model, data, imgsz=self._imgsz(imgsz), batch=batch, device=device, **kw)

    def predict(
        self,
        source: str | Path | np.ndarray | list,
        conf: float = 0.25,
        imgsz: int | None = None,
        max_det: int = 300,
        nms: bool = False,
        iou: float = 0.7,
        device: str = "",
    ) -> list:
        """Images (a path, a folder, a list of paths, or RGB arrays) -> list of ImagePred (boxes xyxy in original
        pixels), in the order of `images(source)` for paths."""
        from kubedistill.core.device import select_device
        from kubedistill.predict import predict_arrays, predict_files

        check_infer_options(conf=conf, iou=iou, max_det=max_det, imgsz=imgsz)
        dev = select_device(device)
        self.model.to(dev)
        kw = dict(conf=conf, iou=iou, max_det=max_det, nms=nms)
        size = self._imgsz(imgsz)
        if isinstance(source, np.ndarray):
            return predict_arrays(self.model, [source], size, dev, **kw)
        if isinstance(source, list) and source and isinstance(source[0], np.ndarray):
            return predict_arrays(self.model, source, size, dev, **kw)
        return predict_files(self.model, self.images(source), size, dev, **kw)

    @staticmethod
    def images(source: str | Path | list) -> list[Path]:
        """The image files `predict` reads for a path, a folder (sorted) or a list of paths."""
        from kubedistill.predict import list_images

        if isinstance(source, list):
            return [f for s in source for f in list_images(s)]
        return list_images(source)
