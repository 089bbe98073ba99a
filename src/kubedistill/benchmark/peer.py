"""`kubedistill benchmark peer-train`: train the same model on the same data for the same epochs with kubedistill and
with Ultralytics (in its own venv, `benchmarks/peer/ultralytics_train.py`), one after the other on this machine,
then score both final models with the same evaluator (kubedistill's val, which reads Ultralytics checkpoints too).

MODEL is a scale (`yolo26n`: from scratch) or a checkpoint (`yolo26n.pt`: fine-tuning the same file in both). Each
tool trains with its own defaults for everything not given; the wall time of each training is reported beside.
With several seeds each trains once per seed, and the figures are means (one seed cannot tell a few points of mAP
apart on a small val split).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from kubedistill.config import train_config
from kubedistill.core.errors import ConfigError, UserError
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.detector import Detector
from kubedistill.train import build_trainer

# the peer scripts, in the repository (benchmarks/peer); a wheel install passes --peer-script
PEER_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "peer"
PEER_TRAIN = PEER_DIR / "ultralytics_train.py"


def check_peer(python: str, script: Path) -> None:
    """The peer's python (the Ultralytics venv's) and its script must exist."""
    if not Path(python).is_file() or not script.is_file():
        raise UserError(
            f"Peer '{python}' or its script '{script}' does not exist",
            "Make the venv with ../shared/peer/make-ultralytics-venv.sh and pass --peer-python VENV/bin/python",
        )


def _absolute_yaml(data: str, folder: Path) -> Path:
    """A copy of data.yaml whose `path` is absolute (Ultralytics resolves a relative one against its own folders)."""
    spec = load_data_yaml(data)
    cfg = yaml.safe_load(Path(spec.yaml_path).read_text())
    cfg["path"] = str(Path(spec.root).resolve())
    out = folder / "data_abs.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def peer_train(
    python: str, script: Path, data: Path, model: str, epochs: int, imgsz: int, batch: int, out: Path, seed: int = 0
) -> tuple[Path, float]:
    """Ultralytics trains in its venv (run name `theirs_sSEED`); (its best.pt, wall seconds)."""
    check_peer(python, script)
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(out / "ulcfg")}
    name = f"theirs_s{seed}"
    cmd = [python, str(script), str(data), model, str(epochs), str(imgsz), str(batch), str(out), name, str(seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    last = (res.stdout.strip().splitlines() or [""])[-1].split()
    if res.returncode != 0 or len(last) != 3 or last[0] != "best":
        raise UserError(
            f"Ultralytics' training failed (exit {res.returncode}): {res.stderr.strip()[-300:]}",
            f"Run {script} by hand in the peer venv to see why",
        )
    return Path(last[1]), float(last[2])


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def run_peer_train_benchmark(
    peer_python: str,
    data: str,
    model: str = "yolo26n",
    epochs: int = 30,
    imgsz: int = 96,
    batch: int = 16,
    out: str | Path | None = None,
    peer_script: Path | None = None,
    echo=print,
    seeds: tuple[int, ...] = (0,),
    ours_options: dict | None = None,
) -> dict:
    """Both tools train once per seed (ours, then theirs, with the same seed); the figures are means over the seeds,
    each seed's beside them in `runs`. `ours_options`: training options for kubedistill's run only."""
    if not seeds:
        raise UserError("No seeds to train with", "Pass --seeds like 0,1,2")
    fixed = {"data", "model", "epochs", "imgsz", "batch", "workers", "project", "name", "exist_ok", "plots", "seed"}
    if clash := sorted(fixed & set(ours_options or {})):
        raise ConfigError(
            f"--ours {clash[0]} is set by the benchmark for both tools",
            "Use the benchmark's own options (--model, --epochs, --imgsz, --batch, --seeds) for it",
        )
    out = Path(out or tempfile.mkdtemp(prefix="kd-peer-train-"))
    out.mkdir(parents=True, exist_ok=True)
    abs_yaml = _absolute_yaml(data, out)
    echo(
        f"# kubedistill benchmark peer-train: {model} on {data}, {epochs} epochs, imgsz {imgsz}, batch {batch}, "
        f"seeds {','.join(map(str, seeds))}" + "".join(f", ours {k}={v}" for k, v in (ours_options or {}).items())
    )
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        ours = build_trainer(
            train_config(
                data=str(abs_yaml),
                model=model,
                epochs=epochs,
                imgsz=imgsz,
                batch=batch,
                workers=0,
                project=str(out),
                name=f"ours_s{seed}",
                exist_ok=True,
                plots=False,
                seed=seed,
                **(ours_options or {}),
            )
        ).train()
        ours_s = time.perf_counter() - t0
        theirs_pt, theirs_s = peer_train(
            peer_python, Path(peer_script or PEER_TRAIN), abs_yaml, model, epochs, imgsz, batch, out, seed
        )
        row = {"seed": seed, "ours_s": round(ours_s, 1), "theirs_s": round(theirs_s, 1)}
        for who, weights in (("ours", ours["best"]), ("theirs", theirs_pt)):
            m = Detector(str(weights)).val(str(abs_yaml), imgsz=imgsz, workers=0)
            row[f"{who}_mAP50-95"], row[f"{who}_mAP50"] = m["mAP50-95"], m["mAP50"]
        runs.append(row)
        echo(
            f"seed {seed}: kubedistill mAP50-95 {row['ours_mAP50-95']:.4f} (mAP50 {row['ours_mAP50']:.4f}) in "
            f"{ours_s:.0f} s; Ultralytics {row['theirs_mAP50-95']:.4f} ({row['theirs_mAP50']:.4f}) in {theirs_s:.0f} s"
        )
    res = {"model": model, "data": str(data), "epochs": epochs, "imgsz": imgsz, "batch": batch, "seeds": list(seeds)}
    res["ours_options"] = dict(ours_options or {})
    for key in ("ours_mAP50-95", "theirs_mAP50-95", "ours_mAP50", "theirs_mAP50"):
        res[key] = _mean(runs, key)
    res["ours_s"], res["theirs_s"] = round(_mean(runs, "ours_s"), 1), round(_mean(runs, "theirs_s"), 1)
    res["map_ratio"] = res["ours_mAP50-95"] / max(res["theirs_mAP50-95"], 1e-9)
    res["runs"] = runs
    n = f"mean of {len(runs)} seeds" if len(runs) > 1 else f"seed {runs[0]['seed']}"
    echo(
        f"kubedistill: mAP50-95 {res['ours_mAP50-95']:.4f} (mAP50 {res['ours_mAP50']:.4f}) in {res['ours_s']:.0f} s ({n})"
    )
    echo(
        f"Ultralytics: mAP50-95 {res['theirs_mAP50-95']:.4f} (mAP50 {res['theirs_mAP50']:.4f}) in "
        f"{res['theirs_s']:.0f} s ({n})"
    )
    echo(
        f"ours/theirs: mAP50-95 {res['map_ratio']:.3f}x, wall time {res['ours_s'] / res['theirs_s']:.3f}x "
        "(same evaluator: kubedistill val)"
    )
    return res
