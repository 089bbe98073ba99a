"""The chart's `helm test`: wait until the server is ready, then run one inference. Standard library only.

    python -m kubedistill.deploy.smoke --url http://SERVICE:PORT --model NAME [--timeout 120]

Checks, in order: GET /v2/health/ready answers 200 (polled until `--timeout`), GET
/v2/models/NAME knows the model, GET /demo.jpg gives a sample image at the model's size, and
POST /v1/detect on it answers 200 with one result. Prints one line per step; exits 0 when all pass,
1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


class SmokeError(Exception):
    pass


def _request(
    url: str, data: bytes | None = None, ctype: str | None = None, timeout: float = 10.0, host: str | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": ctype} if ctype else {}
    if host:  # an ingress gateway picks the service by its host name
        headers["Host"] = host
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _json(url: str, status: int, body: bytes) -> dict:
    try:
        return json.loads(body)
    except ValueError:
        raise SmokeError(f"{url} answered {status} with a body that is not JSON: {body[:200]!r}") from None


def wait_ready(
    base: str, timeout: float, poll: float = 1.0, clock=time.monotonic, sleep=time.sleep, host: str | None = None
) -> float:
    """Seconds until GET /v2/health/ready answered 200; SmokeError with the last answer at the timeout."""
    start = clock()
    last = "no answer yet"
    while True:
        try:
            status, body = _request(f"{base}/v2/health/ready", timeout=min(5.0, max(timeout, 0.1)), host=host)
            if status == 200:
                return clock() - start
            last = f"{status} {body[:200].decode('utf-8', 'replace')}"
        except OSError as e:  # connection refused, DNS not there yet, timeouts
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if clock() - start >= timeout:
            raise SmokeError(f"{base}/v2/health/ready not ready after {timeout:.0f} s (last: {last})")
        sleep(poll)


def run(base: str, model: str, timeout: float = 120.0, echo=print, host: str | None = None) -> dict:
    """The four checks against `base`; `host`: the Host header to send (the service's name behind a gateway)."""
    base = base.rstrip("/")
    waited = wait_ready(base, timeout, host=host)
    echo(f"ready after {waited:.1f} s: {base}" + (f" (Host: {host})" if host else ""))
    status, body = _request(f"{base}/v2/models/{model}", host=host)
    meta = _json(f"{base}/v2/models/{model}", status, body)
    if status != 200:
        raise SmokeError(f"model '{model}' is not served: {status} {meta.get('error', '')}".rstrip())
    echo(f"model {meta.get('name')} version {', '.join(meta.get('versions') or []) or '-'}")
    status, image = _request(f"{base}/demo.jpg", host=host)
    if status != 200 or not image:
        raise SmokeError(f"{base}/demo.jpg answered {status}")
    t0 = time.perf_counter()
    status, body = _request(f"{base}/v1/detect", data=image, ctype="image/jpeg", timeout=60.0, host=host)
    ms = (time.perf_counter() - t0) * 1000
    out = _json(f"{base}/v1/detect", status, body)
    if status != 200:
        raise SmokeError(f"inference failed: {status} {out.get('error', '')}".rstrip())
    results = out.get("results")
    if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0].get("detections"), list):
        raise SmokeError(f"inference answered 200 without one result: {str(out)[:300]}")
    n = len(results[0]["detections"])
    echo(f"one inference: {n} detection(s) in {ms:.0f} ms (model_name {out.get('model_name')})")
    return {"ready_seconds": waited, "detections": n, "latency_ms": ms, "model": meta.get("name")}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kubedistill.deploy.smoke", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the server, e.g. http://release-kubedistill.ns.svc:80")
    ap.add_argument("--model", required=True, help="the model's name in /v2/models/{name}")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    ap.add_argument("--host-header", default=None, help="the Host header to send, e.g. behind an ingress gateway")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args.url, args.model, args.timeout, host=args.host_header)
    except SmokeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
