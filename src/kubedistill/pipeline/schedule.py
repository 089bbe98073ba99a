"""`kubedistill schedule`: declarative recurring runs of the pipeline (schedules.yaml -> KFP recurring runs).

    experiment: kubedistill-retraining      # made on first use
    pipeline: kubedistill-training          # uploaded with `kubedistill pipeline upload`
    pipeline_version: null                  # null: the newest version at apply time
    schedules:
      - name: nightly
        cron: "0 3 * * *"                   # 5 fields (a 0 seconds field is added) or KFP's 6
        params: {dataset_uri: "s3://data/det/", skip_if_unchanged: true}
        max_concurrency: 1
        no_catchup: true
        enabled: true
      - name: weekly-full
        interval: 7d                        # or seconds; s, m, h, d suffixes
        params: {dataset_uri: "s3://data/det/"}

`apply` makes KFP match the file. A recurring run is matched by its name in the experiment and carries a
hash of its spec (trigger, parameters, concurrency, catch-up, pipeline version) in its description:
- not there: created;
- same hash: left alone (only `enabled` is changed in place, with KFP's enable/disable);
- different hash: replaced, since KFP cannot update a recurring run: the new one is created first, then the
  old one deleted, so a failure never leaves the schedule missing;
- in the experiment, made by kubedistill, but no longer in the file: reported, deleted with `prune`.
`trigger NAME` starts one run now with the recurring run's own pipeline version and parameters (KFP's SDK
has no such call).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kubedistill.config import read_yaml_mapping
from kubedistill.core.errors import ConfigError, UserError
from kubedistill.pipeline import PIPELINE_NAME
from kubedistill.pipeline.kfp_client import call, experiment_id, require_version
from kubedistill.pipeline.params import check_params, pipeline_parameters

SPEC_MARK = "kubedistill-spec:"
_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Recurring run name (unique in the experiment).")
    cron: str | None = Field(None, description="Cron expression: 5 fields, or KFP's 6 (seconds first).")
    interval: int | str | None = Field(None, description="Period: seconds, or a number with s/m/h/d.")
    params: dict[str, Any] = Field(default_factory=dict, description="Pipeline parameters.")
    max_concurrency: int = Field(1, ge=1, le=10, description="Runs of this schedule at the same time.")
    no_catchup: bool = Field(True, description="After a pause, run once instead of once per missed period.")
    enabled: bool = Field(True, description="Whether it fires.")
    description: str = Field("", description="Shown in the dashboard.")
    pipeline_version: str | None = Field(None, description="Version name (default: the file's, else the newest).")
    service_account: str | None = Field(None, description="Kubernetes service account of its runs.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        fields = v.split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise ValueError(
                f"'{v}' has {len(v.split())} fields; write 5 (minute hour day month weekday) or 6 (seconds first)"
            )
        return " ".join(fields)

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: int | str | None) -> int | None:
        if v is None:
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            seconds = v
        else:
            m = _INTERVAL.match(str(v))
            if not m:
                raise ValueError(f"'{v}' is not a period; write seconds or e.g. 30m, 6h, 1d")
            seconds = int(m.group(1)) * _UNIT[m.group(2)]
        if seconds < 60:
            raise ValueError(f"{seconds}s is shorter than a minute")
        return seconds

    @model_validator(mode="after")
    def _one_trigger(self) -> Schedule:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cron or interval")
        return self


class ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: str = Field("kubedistill", min_length=1)
    pipeline: str = Field(PIPELINE_NAME, min_length=1)
    pipeline_version: str | None = None
    schedules: list[Schedule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ScheduleFile:
        seen = set()
        for s in self.schedules:
            if s.name in seen:
                raise ValueError(f"schedule name '{s.name}' appears twice")
            seen.add(s.name)
        return self


def load_schedules(path: str | Path, package: str | Path | None = None) -> ScheduleFile:
    """Read and check a schedules file; parameters are checked against the pipeline's (typed, unknown names refused)."""

    p = Path(path)
    raw = read_yaml_mapping(p, "Schedules file", "Pass -f path/to/schedules.yaml", item="field")
    try:
        spec = ScheduleFile(**raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(file)"
            msgs.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(
            f"Invalid schedules file '{p}': " + "; ".join(msgs), "Fix the fields named (docs/pipeline.md)"
        ) from None
    params = pipeline_parameters(package)
    for s in spec.schedules:
        try:
            s.params = check_params(s.params, params)
        except ConfigError as e:
            raise ConfigError(f"Schedule '{s.name}': {e.cause}", e.fix) from None
    return spec


def spec_hash(s: Schedule, version_id: str) -> str:
    """What makes a recurring run this schedule (its name and `enabled` aside)."""
    body = {
        "cron": s.cron,
        "interval": s.interval,
        "params": s.params,
        "max_concurrency": s.max_concurrency,
        "no_catchup": s.no_catchup,
        "description": s.description,
        "version_id": version_id,
        "service_account": s.service_account or "",
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marked_hash(description: str | None) -> str | None:
    m = re.search(re.escape(SPEC_MARK) + r"\s*([0-9a-f]{16})", description or "")
    return m.group(1) if m else None


def list_recurring_runs(client, exp_id: str) -> list:
    out, token = [], ""
    while True:
        res = call(
            partial(client.list_recurring_runs, page_token=token, page_size=100, experiment_id=exp_id),
            "listing recurring runs",
            retry=True,
        )
        out += res.recurring_runs or []
        token = res.next_page_token or ""
        if not token:
            return out


def _is_enabled(rr) -> bool:
    return str(rr.mode or "").upper() == "ENABLE"


def _resolve_version(client, spec: ScheduleFile, s: Schedule, cache: dict) -> tuple[str, str, str]:
    """(pipeline id, version id, version name) the schedule runs."""
    want = s.pipeline_version or spec.pipeline_version
    if want in cache:
        return cache[want]
    pid, v = require_version(
        client, spec.pipeline, want, "Upload one with `kubedistill pipeline upload`, or fix pipeline_version"
    )
    cache[want] = (pid, v.pipeline_version_id, v.display_name)
    return cache[want]


def _create(client, exp_id: str, s: Schedule, pid: str, vid: str, digest: str):
    desc = f"{s.description} {SPEC_MARK}{digest} (managed by kubedistill schedule apply)".strip()
    return call(
        lambda: client.create_recurring_run(
            exp_id,
            s.name,
            description=desc,
            interval_second=s.interval,
            cron_expression=s.cron,
            max_concurrency=s.max_concurrency,
            no_catchup=s.no_catchup,
            params=s.params,
            pipeline_id=pid,
            version_id=vid,
            enabled=s.enabled,
            service_account=s.service_account,
        ),
        f"creating recurring run '{s.name}'",
    )


def apply(
    client,
    spec: ScheduleFile,
    *,
    prune: bool = False,
    dry_run: bool = False,
    namespace: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """Make the experiment's recurring runs match `spec`; returns one {"name", "action", ...} per change or check."""
    exp_id = experiment_id(client, spec.experiment, namespace)
    existing = list_recurring_runs(client, exp_id)
    by_name: dict[str, list] = {}
    for rr in existing:
        by_name.setdefault(rr.display_name, []).append(rr)
    versions: dict = {}
    plan = []
    for s in spec.schedules:
        pid, vid, vname = _resolve_version(client, spec, s, versions)
        digest = spec_hash(s, vid)
        olds = by_name.get(s.name, [])
        same = [rr for rr in olds if marked_hash(rr.description) == digest]
        if len(olds) == 1 and same:
            rr = same[0]
            if _is_enabled(rr) == s.enabled:
                plan.append({"name": s.name, "action": "unchanged", "id": rr.recurring_run_id, "version": vname})
                continue
            action = "enable" if s.enabled else "disable"
            if not dry_run:
                fn = client.enable_recurring_run if s.enabled else client.disable_recurring_run
                call(partial(fn, rr.recurring_run_id), f"{action} recurring run '{s.name}'")
            plan.append({"name": s.name, "action": action + "d", "id": rr.recurring_run_id, "version": vname})
            continue
        action = "replaced" if olds else "created"
        entry = {"name": s.name, "action": action, "version": vname, "replaces": [rr.recurring_run_id for rr in olds]}
        if olds and not any(marked_hash(rr.description) for rr in olds):
            entry["note"] = "the old recurring run was not made by kubedistill"
        if not dry_run:
            new = _create(client, exp_id, s, pid, vid, digest)
            entry["id"] = new.recurring_run_id
            for rr in olds:
                call(
                    partial(client.delete_recurring_run, rr.recurring_run_id),
                    f"deleting the old recurring run '{s.name}'",
                )
        plan.append(entry)
    wanted = {s.name for s in spec.schedules}
    for name, olds in sorted(by_name.items()):
        if name in wanted:
            continue
        for rr in olds:
            if not marked_hash(rr.description):
                continue  # not ours: never touched
            entry = {"name": name, "action": "deleted" if prune else "not in file", "id": rr.recurring_run_id}
            if prune and not dry_run:
                call(partial(client.delete_recurring_run, rr.recurring_run_id), f"deleting recurring run '{name}'")
            plan.append(entry)
    for e in plan:
        extra = f" ({e['note']})" if e.get("note") else ""
        hint = " (kept; `--prune` deletes it)" if e["action"] == "not in file" else ""
        echo(
            f"{'would be ' if dry_run and e['action'] not in ('unchanged', 'not in file') else ''}{e['action']:>10}  {e['name']}"
            f"{'  -> ' + e['version'] if e.get('version') else ''}{extra}{hint}"
        )
    return plan


def find(client, experiment: str, name: str, namespace: str | None = None):
    """The one recurring run called `name` in `experiment` (UserError when none or several)."""
    exp_id = experiment_id(client, experiment, namespace)
    found = [rr for rr in list_recurring_runs(client, exp_id) if rr.display_name == name]
    if not found:
        raise UserError(
            f"No recurring run '{name}' in experiment '{experiment}'", "`kubedistill schedule list` shows them"
        )
    if len(found) > 1:
        raise UserError(
            f"{len(found)} recurring runs are called '{name}' in experiment '{experiment}'",
            "Delete the extra ones in the dashboard or run `kubedistill schedule apply` to replace them",
        )
    return found[0]


def describe(rr) -> dict:
    trig = rr.trigger
    when = None
    if trig is not None and trig.cron_schedule is not None and trig.cron_schedule.cron:
        when = f"cron {trig.cron_schedule.cron}"
    elif trig is not None and trig.periodic_schedule is not None and trig.periodic_schedule.interval_second:
        when = f"every {trig.periodic_schedule.interval_second}s"
    ref = rr.pipeline_version_reference
    return {
        "name": rr.display_name,
        "id": rr.recurring_run_id,
        "trigger": when,
        "enabled": _is_enabled(rr),
        "max_concurrency": rr.max_concurrency,
        "no_catchup": rr.no_catchup,
        "managed": bool(marked_hash(rr.description)),
        "version_id": ref.pipeline_version_id if ref else None,
        "params": (rr.runtime_config.parameters if rr.runtime_config else None) or {},
    }


def list_schedules(client, experiment: str, namespace: str | None = None) -> list[dict]:
    exp_id = experiment_id(client, experiment, namespace)
    return [describe(rr) for rr in list_recurring_runs(client, exp_id)]


def delete(client, experiment: str, name: str, namespace: str | None = None) -> dict:
    rr = find(client, experiment, name, namespace)
    call(partial(client.delete_recurring_run, rr.recurring_run_id), f"deleting recurring run '{name}'")
    return {"name": name, "id": rr.recurring_run_id, "action": "deleted"}


def trigger(client, experiment: str, name: str, namespace: str | None = None) -> dict:
    """Start one run now with the recurring run's own pipeline version, parameters, pipeline root and account."""
    rr = find(client, experiment, name, namespace)
    params = (rr.runtime_config.parameters if rr.runtime_config else None) or {}
    root = rr.runtime_config.pipeline_root if rr.runtime_config else None
    run_name = f"{name} (triggered {time.strftime('%Y-%m-%d %H:%M:%S')})"
    ref = rr.pipeline_version_reference
    if ref is not None and ref.pipeline_id and ref.pipeline_version_id:
        run = call(
            lambda: client.run_pipeline(
                rr.experiment_id,
                run_name,
                pipeline_id=ref.pipeline_id,
                version_id=ref.pipeline_version_id,
                params=params,
                pipeline_root=root,
                service_account=rr.service_account,
            ),
            f"starting a run of '{name}'",
        )
    elif rr.pipeline_spec:
        with tempfile.TemporaryDirectory() as tmp:  # a recurring run made from a package holds the spec itself
            pkg = Path(tmp) / "pipeline.yaml"
            spec = rr.pipeline_spec
            docs = (
                [spec["pipeline_spec"], spec["platform_spec"]] if "pipeline_spec" in spec else [spec]
            )  # with/without platform part
            pkg.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            run = call(
                lambda: client.run_pipeline(
                    rr.experiment_id,
                    run_name,
                    pipeline_package_path=str(pkg),
                    params=params,
                    pipeline_root=root,
                    service_account=rr.service_account,
                ),
                f"starting a run of '{name}'",
            )
    else:
        raise UserError(
            f"Recurring run '{name}' names no pipeline version and holds no pipeline spec",
            "Re-create it with `schedule apply`",
        )
    return {
        "name": name,
        "recurring_run_id": rr.recurring_run_id,
        "run_id": run.run_id,
        "run_name": run_name,
        "params": params,
        "url": f"{client._get_url_prefix()}/#/runs/details/{run.run_id}",
    }
