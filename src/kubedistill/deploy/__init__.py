"""`kubedistill deploy`: roll a pinned model out with the Helm chart, wait, test, roll back on failure.

    from kubedistill.deploy.run import deploy
    summary = deploy("det", "serving", "models:/det/7", timeout=300)

Modules: `chart` finds the chart (and its values.yaml, the one source of image references),
`plan` turns the request into chart values, `helm` wraps the in-process Helm engine, `rollout`
waits for the Deployments with the Kubernetes client, `run` ties them together, `smoke` is what the
chart's `helm test` pod runs. Importing this package loads nothing (the test pod imports `smoke` with the
standard library alone); Helm and the Kubernetes client load when `deploy` runs.
"""
