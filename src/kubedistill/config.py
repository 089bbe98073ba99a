"""Training configuration: one pydantic model filled from YAML, CLI flags or Python keywords.

Names follow the Ultralytics trainer (`data`, `epochs`, `imgsz`, `batch`, `lr0`, `lrf`, ...) so that
users' habits carry over. A wrong name or value raises `ConfigError` naming it (with a suggestion for
a misspelt name).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kubedistill.core.errors import ConfigError
from kubedistill.core.yamlfile import YamlFileError, load_yaml_text, read_yaml_file

_NONE_STRINGS = {"", "none", "null", "~"}


class TrainConfig(BaseModel):
    """Every training option, with Ultralytics' names and sensible defaults."""

    # inf and nan are refused for every float (lr0=inf passed and trained a model full of NaN)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # what to train, on what
    model: str = Field(
        "yolo26n",
        description="Scale name (yolo26n/s/m/l/x; yolo-n ... also accepted) or a checkpoint to fine-tune from: a kubedistill "
        "or Ultralytics YOLO26 .pt, s3://bucket/key.pt, or a registered model models:/NAME/VERSION.",
    )
    data: str | None = Field(None, description="Path to data.yaml.")
    # upper bounds catch typos (epochs=10000000), not real runs
    epochs: int = Field(100, ge=1, le=100_000, description="Training epochs.")
    batch: int = Field(16, ge=1, le=65_536, description="Images per batch (over all processes).")
    imgsz: int = Field(640, ge=32, le=8192, description="Square training/validation image size, a multiple of 32.")
    workers: int = Field(2, ge=0, le=256, description="DataLoader worker processes per rank.")
    device: str = Field("", description="'' picks cuda when available, else cpu; or 'cpu', 'cuda', 'cuda:0'.")
    seed: int = Field(0, description="Random seed.")
    deterministic: bool = Field(True, description="Use deterministic algorithms where torch has them.")
    amp: bool = Field(
        True,
        description="Mixed precision: fp16 on CUDA, bf16 on a CPU with native bf16 (AMX or AVX512-BF16), "
        "fp32 on other CPUs. The loss is computed in fp32.",
    )
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="Fraction of the training split to use.")

    # optimisation
    optimizer: Literal["SGD", "AdamW", "MuSGD", "auto"] = Field("auto", description="SGD, AdamW, MuSGD or auto.")
    lr0: float = Field(0.01, gt=0.0, description="Initial learning rate.")
    lrf: float = Field(0.01, gt=0.0, le=1.0, description="Final learning rate as a fraction of lr0.")
    momentum: float = Field(0.937, ge=0.0, lt=1.0, description="SGD momentum / Adam beta1.")
    weight_decay: float = Field(0.0005, ge=0.0, description="Weight decay (scaled by batch/nbs).")
    warmup_epochs: float = Field(3.0, ge=0.0, description="Linear warmup length in epochs (fractions allowed).")
    warmup_momentum: float = Field(0.8, ge=0.0, lt=1.0, description="Momentum at the start of warmup.")
    warmup_bias_lr: float = Field(0.1, ge=0.0, description="Bias learning rate at the start of warmup.")
    cos_lr: bool = Field(False, description="Cosine instead of linear decay from lr0 to lr0*lrf.")
    nbs: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="Nominal batch size: gradients accumulate up to it. Default: 64 (Ultralytics'), lowered for a "
        "short run so that it makes at least 1000 optimizer steps (down to no accumulation).",
    )

    # loss
    box: float = Field(7.5, ge=0.0, description="Box (IoU) loss gain.")
    cls: float = Field(0.5, ge=0.0, description="Classification loss gain.")
    l1: float = Field(1.0, ge=0.0, description="Gain of the L1 loss on box edges normalised by image size.")
    box_loss: str = Field(
        "ciou",
        description="Box loss: iou, giou, diou, ciou, eiou, siou, wiou, alpha_iou, a 'module:attr' plugin "
        "or a kubedistill.losses entry point (docs/losses.md).",
    )
    cls_loss: str = Field(
        "bce",
        description="Class loss: bce, focal, varifocal, qfl, ghm, a 'module:attr' plugin "
        "or a kubedistill.losses entry point (docs/losses.md).",
    )
    fl_gamma: float = Field(2.0, ge=0.0, le=10.0, description="Focusing exponent: focal/varifocal gamma, qfl beta.")
    fl_alpha: float | None = Field(
        None, ge=0.0, le=1.0, description="Focal positive-class weight / varifocal negative weight (None: 0.25 / 0.75)."
    )
    ghm_bins: int = Field(10, ge=1, le=1000, description="GHM-C: gradient-norm histogram bins.")
    ghm_momentum: float = Field(
        0.75, ge=0.0, lt=1.0, description="GHM-C: EMA momentum of the bin counts (0: per batch)."
    )
    alpha_iou: float = Field(3.0, gt=0.0, le=10.0, description="Alpha-IoU exponent: loss = 1 - IoU^alpha.")
    wiou_momentum: float = Field(
        0.01, gt=0.0, le=1.0, description="Wise-IoU v3: momentum of the running mean of the IoU loss."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Classification target smoothing eps.")
    o2m: float = Field(0.8, ge=0.0, le=1.0, description="ProgLoss: one-to-many weight at the first epoch.")
    o2m_final: float = Field(0.1, ge=0.0, le=1.0, description="ProgLoss: one-to-many weight at the last epoch.")
    tal_topk: int = Field(10, ge=1, description="Anchors per object for the one-to-many head.")
    stal: bool = Field(True, description="Small-target-aware assignment: tiny objects still get anchors.")

    # distillation (see the distillation docs)
    distill_model: str | None = Field(
        None,
        description="Teacher for feature distillation: a kubedistill or Ultralytics YOLO26 .pt, s3://bucket/key.pt, or a "
        "registered model models:/NAME/VERSION.",
    )
    dis: float = Field(6.0, ge=0.0, description="Distillation loss gain.")
    dis_o2o: float = Field(0.0, ge=0.0, description="Gain of the one-to-one head's class-score distillation (0: off).")
    dis_temp: float = Field(2.0, gt=0.0, le=20.0, description="Temperature of the one-to-one class-score distillation.")

    # augmentation
    mosaic: float = Field(1.0, ge=0.0, le=1.0, description="Mosaic probability.")
    close_mosaic: int = Field(10, ge=0, description="Turn mosaic off for the last N epochs.")
    degrees: float = Field(0.0, ge=0.0, le=180.0, description="Random rotation (+/- deg).")
    translate: float = Field(0.1, ge=0.0, le=0.9, description="Random translation (+/- fraction).")
    scale: float = Field(0.5, ge=0.0, lt=1.0, description="Random scale gain (+/- fraction).")
    fliplr: float = Field(0.5, ge=0.0, le=1.0, description="Horizontal flip probability.")
    hsv_h: float = Field(0.015, ge=0.0, le=1.0, description="Hue jitter (fraction).")
    hsv_s: float = Field(0.7, ge=0.0, le=1.0, description="Saturation jitter (fraction).")
    hsv_v: float = Field(0.4, ge=0.0, le=1.0, description="Value jitter (fraction).")

    # data check
    min_usable: float = Field(0.5, ge=0.0, le=1.0, description="Stop if less than this fraction of a split is usable.")

    # validation / inference
    val: bool = Field(True, description="Validate every epoch.")
    conf: float = Field(0.001, ge=0.0, le=1.0, description="Score threshold for validation detections.")
    iou: float = Field(0.7, gt=0.0, le=1.0, description="NMS IoU threshold (nms=True only).")
    max_det: int = Field(300, ge=1, description="Detections per image.")
    nms: bool = Field(False, description="Use the one-to-many head with NMS instead of the NMS-free head.")

    # run bookkeeping
    patience: int = Field(100, ge=0, description="Stop after this many epochs without mAP improvement (0: never).")
    save_period: int = Field(-1, description="Also save weights/epochN.pt every N epochs (-1: off).")
    resume: bool | str = Field(
        False,
        description="True to continue from last.pt, a last.pt path, or 'auto': continue when this run's last.pt "
        "exists (here, or under upload=) and was trained with the same options, else start (what TrainJob nodes run).",
    )
    project: str = Field("runs", description="Folder holding runs.")
    name: str = Field("train", min_length=1, description="Run name: outputs go to project/name.")
    exist_ok: bool = Field(False, description="Reuse project/name instead of making name2, name3, ...")
    plots: bool = Field(True, description="Write plots into the run folder.")
    verbose: bool = Field(True, description="Log progress.")

    # MLflow tracking (on with mlflow=True or when MLFLOW_TRACKING_URI is set)
    mlflow: bool = Field(False, description="Track the run in MLflow (also on when MLFLOW_TRACKING_URI is set).")
    mlflow_uri: str = Field(
        "", description="Tracking URI; default MLFLOW_TRACKING_URI, else a sqlite file in the project folder."
    )
    mlflow_experiment: str = Field(
        "", description="Experiment name; default MLFLOW_EXPERIMENT_NAME, else 'kubedistill'."
    )
    mlflow_parent: str = Field("", description="Parent run id: this run becomes a nested child (pipelines set it).")
    mlflow_tags: dict[str, str] = Field(
        default_factory=dict, description="Extra tags on the run, e.g. {pipeline_run_id: abc}."
    )
    mlflow_system_metrics: bool = Field(
        True,
        description="Log CPU, memory, disk, network (and GPU with nvidia-ml-py) use as system/ metrics of the run, "
        "every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (10); rank 0 only.",
    )
    # where the run folder goes when training ends (a multi-node TrainJob's nodes keep nothing)
    upload: str = Field(
        "",
        description="s3:// prefix (or a folder): last.pt is copied there after every epoch, and the whole run "
        "folder when training ends (also after a failure).",
    )

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_case(cls, v: Any) -> Any:
        if isinstance(v, str):
            for name in ("SGD", "AdamW", "MuSGD", "auto"):
                if v.lower() == name.lower():
                    return name
        return v

    @field_validator("fl_alpha", mode="before")
    @classmethod
    def _fl_alpha_none(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in _NONE_STRINGS:
            return None
        return v

    @field_validator("data", "distill_model", mode="before")
    @classmethod
    def _none_strings(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in _NONE_STRINGS:
            return None
        return v

    @field_validator("mlflow_tags", mode="before")
    @classmethod
    def _tags_text(cls, v: Any) -> Any:
        """From the CLI a mapping arrives as text: `{a: b}` (YAML) or `a=b,c=d`."""
        if isinstance(v, str):
            text = v.strip()
            if not text:
                return {}
            if "=" in text and not text.startswith("{"):
                pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
                if all(len(p) == 2 for p in pairs):
                    return {k.strip(): val.strip() for k, val in pairs}
            try:
                v = load_yaml_text(text)
            except YamlFileError:
                raise ValueError("write {key: value, ...} or key=value,key2=value2") from None
        if isinstance(v, dict):  # tags are strings: {run: 3} means "3"
            return {str(k): "" if val is None else str(val) for k, val in v.items()}
        return v

    @field_validator("resume", mode="before")
    @classmethod
    def _resume(cls, v: Any) -> Any:
        if isinstance(v, str):
            low = v.strip().lower()
            if low in ("true", "yes", "1"):
                return True
            if low in ("false", "no", "0") or low in _NONE_STRINGS:
                return False
            if low == "auto":
                return "auto"
        return v

    @field_validator("imgsz")
    @classmethod
    def _imgsz_stride(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32 (the largest stride); try {max(32, round(v / 32) * 32)}")
        return v

    @field_validator("name")
    @classmethod
    def _name_inside_project(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in (".", "..") or "\0" in v:
            raise ValueError("must be one folder name inside project (no '/', '..'); use project for the parent")
        return v

    @model_validator(mode="after")
    def _check_cross(self) -> TrainConfig:
        if self.o2m_final > self.o2m:
            raise ValueError(f"o2m_final ({self.o2m_final}) must not exceed o2m ({self.o2m})")
        return self


class InferOptions(BaseModel):
    """The numbers of `val`, `predict` and the Python API's .val()/.predict(), checked before any work (val took
    --conf nan and scored nothing)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    conf: float = Field(0.25, ge=0.0, le=1.0, description="Score threshold.")
    iou: float = Field(0.7, gt=0.0, le=1.0, description="NMS IoU threshold.")
    max_det: int = Field(300, ge=1, le=10_000, description="Detections per image.")
    imgsz: int | None = Field(None, ge=32, le=8192, description="Image size.")
    batch: int = Field(16, ge=1, le=4096, description="Images per batch.")
    workers: int = Field(2, ge=0, le=256, description="DataLoader worker processes.")


def check_infer_options(**values: Any) -> None:
    """ConfigError naming the option when one of `values` (InferOptions' names; None: unset) is out of range."""
    make_config(InferOptions, None, "option", **{k: v for k, v in values.items() if v is not None})


def _format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    known = list(model.model_fields)
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"unknown option '{loc}'{hint}")
        else:
            given = e.get("input")
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"option '{loc}' = {given!r}: {msg}")
    command = "val --help` or `kubedistill predict" if model is InferOptions else "train"
    return ConfigError(
        f"Invalid {source}: " + "; ".join(lines),
        f"Fix the option(s) named; `kubedistill {command} --help` lists every option with its default",
    )


def normalize_keys(d: dict[str, Any]) -> dict[str, Any]:
    """`distill-model` and `distill_model` are the same option."""
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def read_yaml_mapping(
    path: str | Path, what: str = "Config file", missing_fix: str = "Check the path", item: str = "option"
) -> dict[str, Any]:
    """A YAML file holding a mapping (config, parameters, schedules); ConfigError naming the file otherwise."""
    p = Path(path)
    try:
        data = read_yaml_file(p) or {}
    except YamlFileError as e:
        fix = missing_fix if e.reason == "does not exist" else "Fix the file, or pass another"
        raise ConfigError(f"{what} '{p}' {e.reason}", fix) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{p}' must hold a mapping of {item}: value", f"Write one {item} per line")
    return data


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    return normalize_keys(read_yaml_mapping(path, "Config file", "Check the path given to --cfg"))


def make_config(
    schema: type[BaseModel], cfg: str | Path | dict | None = None, source: str = "config", /, **overrides: Any
):
    """Build `schema` from a YAML path or dict, with keyword overrides taking precedence.

    The parameters are positional-only so that options may be called `model`, `cfg` or `source`.
    """
    base: dict[str, Any] = {}
    if isinstance(cfg, (str, Path)):
        base = read_yaml_config(cfg)
        source = f"option in {cfg}"
    elif isinstance(cfg, dict):
        base = normalize_keys(cfg)
    base.update(normalize_keys(overrides))
    try:
        return schema(**base)
    except ValidationError as e:
        raise _format_validation_error(e, schema, source) from None


def train_config(cfg: str | Path | dict | None = None, **overrides: Any) -> TrainConfig:
    return make_config(TrainConfig, cfg, "config", **overrides)


def parse_cli_overrides(args: list[str]) -> dict[str, Any]:
    """Parse `--name value`, `--name=value`, `name=value` and bare `--flag` (True) into a dict.

    Values stay strings (pydantic coerces them); `--no-flag` gives False.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            key = a[2:]
            if "=" in key:
                key, val = key.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                val = args[i + 1]
                i += 1
            elif key.startswith("no-") or key.startswith("no_"):
                key, val = key[3:], "false"
            else:
                val = "true"
        elif "=" in a:
            key, val = a.split("=", 1)
        else:
            raise ConfigError(f"Unexpected argument '{a}'", "Write options as --name value or name=value")
        key = key.replace("-", "_")
        if key in out:
            raise ConfigError(f"Option '{key}' is given twice ({out[key]!r} and {val!r})", "Give each option once")
        out[key] = val
        i += 1
    return out
