"""The pipeline's commands (`kubedistill run`, `kubedistill pipeline ...`, `kubedistill schedule ...`), added to the
main CLI by `add_pipeline_commands(app)`. Only typer is imported here; kfp and the rest load when a command runs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from kubedistill.core.errors import UserError
from kubedistill.pipeline.kfp_client import (
    DEFAULT_PACKAGE,
    Endpoint,
    compile_components,
    compile_pipeline,
    connect,
    submit,
    upload,
)
from kubedistill.pipeline.local import LOCAL_DEFAULTS, run_local
from kubedistill.pipeline.params import check_params, parse_assignments, pipeline_parameters, read_params_file
from kubedistill.pipeline.schedule import apply, delete, list_schedules, load_schedules, trigger

pipeline_app = typer.Typer(
    no_args_is_help=True, help="The Kubeflow pipeline: compile, upload, submit, list its parameters."
)
schedule_app = typer.Typer(
    no_args_is_help=True, help="Recurring runs of the pipeline, declared in a schedules.yaml (docs/pipeline.md)."
)

_HOST = typer.Option(
    None, "--host", envvar="KF_PIPELINES_ENDPOINT", help="KFP endpoint URL (in a pod: the in-cluster service)."
)
_NS = typer.Option(
    None, "--namespace", envvar="KFP_NAMESPACE", help="Kubeflow profile namespace (multi-user Kubeflow)."
)
_TOKEN = typer.Option(None, "--token", envvar="KFP_TOKEN", help="Bearer token for the endpoint.")
_SA = typer.Option(
    None, "--sa-token", envvar="KFP_SA_TOKEN_PATH", help="Service-account token file (projected; re-read on each call)."
)
_PACKAGE_HELP = "Compiled pipeline (default: pipelines/compiled/training.yaml if present, else compiled now)."


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _client(host, namespace, token, sa_token):

    return connect(
        Endpoint(host=host, namespace=namespace, token=token, sa_token_path=str(sa_token) if sa_token else None)
    )


def _package(package: Path | None, tmp: str) -> Path:

    if package is not None:
        if not package.is_file():
            raise UserError(
                f"Pipeline package '{package}' does not exist", "Run `kubedistill pipeline compile` or fix --package"
            )
        return package
    if DEFAULT_PACKAGE.is_file():
        return DEFAULT_PACKAGE
    return compile_pipeline(Path(tmp) / "training.yaml")


def _values(params_file: Path | None, assignments: list[str], package: Path | None) -> dict:

    raw = dict(read_params_file(params_file)) if params_file else {}
    raw.update(parse_assignments(assignments))
    return check_params(raw, pipeline_parameters(package))


def run_cmd(
    data: str | None = typer.Option(
        None, "--data", help="Dataset URI (folder, data.yaml, s3://, archive; default: the built-in demo)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file of pipeline parameters (`kubedistill pipeline params` lists them)."
    ),
    sets: list[str] = typer.Option([], "--set", help="Pipeline parameter NAME=VALUE (repeatable; after --config)."),
    out: Path = typer.Option(
        Path("runs/pipeline"), "--out", help="Folder for step outputs, MLflow (sqlite), datasets and logs."
    ),
    runner: str = typer.Option(
        "subprocess",
        "--runner",
        help="subprocess: each step as a process here (faster); docker: each step in the train image, as on a "
        "cluster (`make images` builds it).",
    ),
):
    """Run the Kubeflow pipeline here through kfp.local: demo data and small settings unless told otherwise."""

    values = dict(LOCAL_DEFAULTS)
    if config:
        values.update(read_params_file(config))
    if data:
        values["dataset_uri"] = data
    values.update(parse_assignments(sets))
    params = check_params(values, pipeline_parameters())
    res = run_local(params, out, echo=typer.echo, runner=runner)
    typer.echo("")
    for line in res["summary"]:
        typer.echo(line)


@pipeline_app.command("compile")
def compile_cmd(
    out: Path = typer.Option(
        Path("pipelines/compiled/training.yaml"), "--out", help="Where to write the pipeline YAML."
    ),
    components_dir: Path | None = typer.Option(
        None, "--components-dir", help="Also write each step's component YAML here."
    ),
):
    """Compile the pipeline to a YAML package (what `upload` sends; committed under pipelines/compiled/)."""

    typer.echo(f"wrote {compile_pipeline(out)}")
    if components_dir:
        typer.echo(f"wrote {len(compile_components(components_dir))} component specs in {components_dir}")


@pipeline_app.command("params")
def params_cmd(
    package: Path | None = typer.Option(
        None, "--package", help="Compiled pipeline (default: the one in this kubedistill)."
    ),
):
    """List the pipeline's parameters: name, type, default, description."""

    for name, p in pipeline_parameters(package).items():
        typer.echo(f"{name} ({p['type'].lower()}, default {json.dumps(p['default'])}): {p['description']}")


@pipeline_app.command("upload")
def upload_cmd(
    package: Path | None = typer.Option(None, "--package", help=_PACKAGE_HELP),
    name: str = typer.Option("kubedistill-training", "--name", help="Pipeline name in the dashboard."),
    version: str | None = typer.Option(
        None, "--version", help="Version name (default: v<kubedistill version>-<content hash>)."
    ),
    description: str = typer.Option("", "--description", help="Description (default: the pipeline's)."),
    host: str | None = _HOST,
    namespace: str | None = _NS,
    token: str | None = _TOKEN,
    sa_token: Path | None = _SA,
):
    """Create the pipeline (first time) and a new version of it; the same content twice is not uploaded again."""

    with tempfile.TemporaryDirectory() as tmp:
        pkg = _package(package, tmp)
        res = upload(
            _client(host, namespace, token, sa_token),
            pkg,
            name=name,
            version=version,
            description=description,
            namespace=namespace,
        )
    _echo_json(res)


@pipeline_app.command("submit")
def submit_cmd(
    param: list[str] = typer.Option([], "--param", help="Pipeline parameter NAME=VALUE (repeatable)."),
    params_file: Path | None = typer.Option(
        None, "--params-file", help="YAML file of pipeline parameters (--param wins)."
    ),
    experiment: str = typer.Option("kubedistill", "--experiment", help="Experiment (made on first use)."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run name (default: pipeline name and time)."),
    name: str = typer.Option("kubedistill-training", "--name", help="Pipeline name (runs an uploaded version)."),
    version: str | None = typer.Option(None, "--version", help="Version name (default: the newest)."),
    package: Path | None = typer.Option(
        None, "--package", help="Run this compiled YAML instead of an uploaded version."
    ),
    caching: bool | None = typer.Option(
        None, "--caching/--no-caching", help="Override the steps' caching for this run."
    ),
    service_account: str | None = typer.Option(
        None, "--service-account", help="Kubernetes service account of the run."
    ),
    host: str | None = _HOST,
    namespace: str | None = _NS,
    token: str | None = _TOKEN,
    sa_token: Path | None = _SA,
):
    """Start a run of the pipeline (the newest uploaded version unless told otherwise)."""

    values = _values(params_file, param, package)
    res = submit(
        _client(host, namespace, token, sa_token),
        params=values,
        experiment=experiment,
        run_name=run_name,
        pipeline_name=name,
        version=version,
        package=package,
        namespace=namespace,
        enable_caching=caching,
        service_account=service_account,
    )
    _echo_json(res)


def _experiment(experiment: str | None, file: Path | None) -> str:
    if experiment:
        return experiment
    if file:
        return load_schedules(file).experiment
    return "kubedistill"


_FILE = typer.Option(None, "--file", "-f", help="schedules.yaml (its experiment is used).")
_EXP = typer.Option(
    None, "--experiment", help="Experiment holding the recurring runs (default: the file's, else kubedistill)."
)


@schedule_app.command("apply")
def schedule_apply(
    file: Path = typer.Option(..., "--file", "-f", help="schedules.yaml"),
    prune: bool = typer.Option(
        False, "--prune", help="Delete kubedistill-made recurring runs the file no longer lists."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; change nothing."),
    package: Path | None = typer.Option(None, "--package", help="Check parameters against this compiled pipeline."),
    host: str | None = _HOST,
    namespace: str | None = _NS,
    token: str | None = _TOKEN,
    sa_token: Path | None = _SA,
):
    """Make the recurring runs match the file: create, replace changed ones (delete + create), leave unchanged ones alone."""

    spec = load_schedules(file, package)
    apply(
        _client(host, namespace, token, sa_token),
        spec,
        prune=prune,
        dry_run=dry_run,
        namespace=namespace,
        echo=typer.echo,
    )


@schedule_app.command("list")
def schedule_list(
    experiment: str | None = _EXP,
    file: Path | None = _FILE,
    host: str | None = _HOST,
    namespace: str | None = _NS,
    token: str | None = _TOKEN,
    sa_token: Path | None = _SA,
):
    """The experiment's recurring runs: trigger, enabled, whether kubedistill manages them, parameters."""

    _echo_json(list_schedules(_client(host, namespace, token, sa_token), _experiment(experiment, file), namespace))


@schedule_app.command("delete")
def schedule_delete(
    name: str = typer.Argument(..., help="Recurring run name."),
    experiment: str | None = _EXP,
    file: Path | None = _FILE,
    host: str | None = _HOST,
    namespace: str | None = _NS,
    token: str | None = _TOKEN,
    sa_token: Path | None = _SA,
):
    """Delete one recurring run (by name)."""

    _echo_json(delete(_client(host, namespace, token, sa_token), _experiment(experiment, file), name, namespace))


@schedule_app.command("trigger")
def schedule_trigger(
    name: str = typer.Argument(..., help="Recurring run name."),
    experiment: str | None = _EXP,
    file: Path | None = _FILE,
    host: str | None = _HOST,
    namespace: str | None = _NS,
    token: str | None = _TOKEN,
    sa_token: Path | None = _SA,
):
    """Start one run now with the schedule's pipeline version and parameters."""

    _echo_json(trigger(_client(host, namespace, token, sa_token), _experiment(experiment, file), name, namespace))


def add_pipeline_commands(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(schedule_app, name="schedule")
