"""The peer side of `kubedistill benchmark train --peer-python VENV/bin/python`: Ultralytics' training step, timed.

Run by the benchmark in the throwaway Ultralytics venv (../shared/peer/make-ultralytics-venv.sh), never imported by
kubedistill. It builds Ultralytics' YOLO26 model of the given scale and class count, loads the batch the benchmark
saved (kubedistill's augmented batch: images and labels in the shared Ultralytics layout), and then, for each line
"N" on stdin, runs N training steps (forward of both heads, Ultralytics' E2E loss, backward, SGD step) and prints
the seconds they took; "quit" ends it.

usage: ultralytics_train_step.py BATCH.npz SCALE NC
"""

import sys
import time

import numpy as np
import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel


def main() -> None:
    path, scale, nc = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = np.load(path)
    batch = {k: torch.from_numpy(data[k]) for k in ("img", "batch_idx", "cls", "bboxes")}
    model = DetectionModel(f"yolo26{scale}.yaml", nc=nc, verbose=False).train()
    model.args = get_cfg()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = model.loss(batch)
        loss.sum().backward()
        opt.step()

    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        n = int(cmd)
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        print(f"{time.perf_counter() - t0:.6f}", flush=True)


if __name__ == "__main__":
    main()
