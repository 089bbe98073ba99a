"""`kubedistill benchmark onnx`: the model time of ONNX files side by side (onnxruntime, CPU).

Every file gets a session with the server's options (`serve.model.session_options`: threads, ORT_ENABLE_ALL,
spinning stopped between runs) and a random input of its own shape (batch 1), and the files are timed in turn
(A, B, A, B, ...) so that a busy spell on the machine affects them alike; medians per file. The files need not be
kubedistill's: any model with one image input does (an Ultralytics export, say), which is how the two are compared.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np

from kubedistill.core.errors import UserError
from kubedistill.serve.model import default_threads, session_options


def _session(path: Path, threads: int):
    import onnxruntime as ort

    if not path.is_file():
        raise UserError(f"Model '{path}' does not exist", "Pass .onnx files, e.g. --model a.onnx --model b.onnx")
    sess = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise UserError(f"Model '{path}' does not take one image batch", "Pass detectors with one [1, 3, S, S] input")
    shape = [1 if not isinstance(d, int) else d for d in inputs[0].shape]
    dtype = np.float16 if "float16" in inputs[0].type else np.float32
    x = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
    return sess, {inputs[0].name: x}, shape


def onnx_times(
    models: list[str | Path], rounds: int = 50, warmup: int = 5, threads: int | None = None, echo=print
) -> list[dict]:
    """Median ms per run of each model, timed in turn over `rounds`; `ratio` is against the first model."""
    if rounds < 1 or warmup < 0:
        raise UserError("--rounds must be at least 1 and --warmup at least 0", "e.g. --rounds 50 --warmup 5")
    threads = threads or default_threads()
    runs = [_session(Path(m), threads) for m in models]
    for sess, feed, _ in runs:
        for _ in range(warmup):
            sess.run(None, feed)
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for (sess, feed, _), out in zip(runs, samples, strict=True):
            t0 = time.perf_counter()
            sess.run(None, feed)
            out.append((time.perf_counter() - t0) * 1000.0)
    medians = [statistics.median(s) for s in samples]
    rows = [
        {
            "model": str(m),
            "input": shape,
            "ms": round(ms, 3),
            "ratio": round(ms / medians[0], 3),
            "p10_ms": round(float(np.percentile(s, 10)), 3),
            "p90_ms": round(float(np.percentile(s, 90)), 3),
        }
        for m, (_, _, shape), ms, s in zip(models, runs, medians, samples, strict=True)
    ]
    echo(
        f"# kubedistill benchmark onnx: {rounds} interleaved rounds, {threads} threads, "
        f"cpu={platform.processor() or platform.machine()}"
    )
    for r in rows:
        echo(
            f"{r['ms']:9.3f} ms  (p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f})  {r['ratio']:6.3f}x  "
            f"{r['input']}  {r['model']}"
        )
    return rows
