"""The peer side of `kubedistill benchmark peer-train --peer-python VENV/bin/python`: Ultralytics trains a model.

Run by the benchmark in the throwaway Ultralytics venv (../shared/peer/make-ultralytics-venv.sh), never imported by
kubedistill. Trains MODEL (a scale name or yaml for from scratch, or a .pt to fine-tune) on DATA with Ultralytics' defaults
for the given epochs, image size, batch and seed (0 if not given), on the CPU, and prints "best PATH SECONDS" on its
last line.

usage: ultralytics_train.py DATA MODEL EPOCHS IMGSZ BATCH PROJECT NAME [SEED]
"""

import sys
import time
from pathlib import Path

from ultralytics import YOLO


def main() -> None:
    data, model, epochs, imgsz, batch, project, name = sys.argv[1:8]
    seed = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    if not model.endswith((".pt", ".yaml")):
        model += ".yaml"  # a scale name: from scratch (Ultralytics would download the .pt)
    t0 = time.perf_counter()
    run = YOLO(model).train(
        data=data,
        epochs=int(epochs),
        imgsz=int(imgsz),
        batch=int(batch),
        workers=0,
        device="cpu",
        project=project,
        name=name,
        exist_ok=True,
        plots=False,
        amp=False,
        seed=seed,
        verbose=False,
    )
    print(f"best {Path(run.save_dir) / 'weights' / 'best.pt'} {time.perf_counter() - t0:.3f}", flush=True)


if __name__ == "__main__":
    main()
