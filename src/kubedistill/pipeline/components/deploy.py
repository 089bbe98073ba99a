"""deploy: the Helm rollout of the pinned, promoted version (`kubedistill.pipeline.steps.deploy_step`)."""

from kfp import dsl

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def deploy(
    version: str,
    registered_model_name: str,
    release: str = "kubedistill",
    namespace: str = "kubedistill",
    serving_mode: str = "deployment",
) -> str:
    """Roll models:/NAME/VERSION out as the Helm release (waits for it, rolls back on failure); returns the
    release status."""
    import json

    from kubedistill.pipeline.steps import deploy_step, run

    res = run(deploy_step, registered_model_name, version, release=release, namespace=namespace, mode=serving_mode)
    print(
        json.dumps(
            {
                k: res.get(k)
                for k in ("release", "namespace", "mode", "model_uri", "revision", "status", "rolled_back", "reason")
            },
            default=str,
        )
    )
    return str(res.get("status"))
