"""`kubedistill train data=s3://...`: the trainer fetches the dataset into the cache before it checks it."""

import pytest
import yaml

from kubedistill import storage
from kubedistill.storage import s3 as storage_s3
from kubedistill.train import build_trainer


class _Stop(Exception):
    pass


def test_trainer_fetches_s3_dataset(s3_env, tiny_data, tmp_path, monkeypatch, tiny_cfg):
    s3_env.bucket("kd-train")
    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage_s3._client.cache_clear()
    uri = storage.upload(tiny_data.parent, "s3://kd-train/datasets/tiny")
    seen = {}

    def stop(trainer):  # after setup (data fetched and checked, model built), before the first step
        seen["spec"] = trainer.spec
        raise _Stop

    cfg = tiny_cfg(uri, tmp_path, "s3", epochs=1, upload="s3://kd-train/runs")
    with pytest.raises(_Stop):
        build_trainer(cfg, {"on_train_start": [stop]}).train()
    # upload=: the run folder is copied when training ends, also when it ended early (a TrainJob's nodes keep
    # nothing): here args.yaml and data_check.json
    keys = {o.rel for o in storage.list_files("s3://kd-train/runs/s3/")}
    assert {"args.yaml", "data_check.json"} <= keys, keys
    spec = seen["spec"]
    assert (tmp_path / "cache" / "datasets") in spec.yaml_path.parents
    assert (len(spec.splits["train"]), len(spec.splits["val"])) == (16, 8)
    assert (
        yaml.safe_load((tmp_path / "s3" / "args.yaml").read_text())["data"] == uri
    )  # the run records the URI, not the cache
    storage_s3._client.cache_clear()


def test_a_replaced_node_resumes_from_upload(s3_env, tiny_data, tmp_path, monkeypatch, tiny_cfg):
    """resume=auto with upload= (what every TrainJob node runs): last.pt is copied to upload= after each epoch,
    so a run whose disk is gone (a replaced pod) resumes from there; a last.pt of other options is not resumed."""
    s3_env.bucket("kd-up")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage_s3._client.cache_clear()
    opts = dict(epochs=3, upload="s3://kd-up/runs", resume="auto", exist_ok=True)

    def die_after_epoch_1(trainer):
        if trainer.epoch == 0:
            raise _Stop

    with pytest.raises(_Stop):  # the first pod: no checkpoint anywhere, starts; dies after epoch 1's save
        build_trainer(
            tiny_cfg(tiny_data, tmp_path / "pod1", "r", **opts), {"on_model_save": [die_after_epoch_1]}
        ).train()
    assert {o.rel for o in storage.list_files("s3://kd-up/runs/r/weights/")} >= {"last.pt"}
    # a new pod, nothing on its disk: resumes from upload= at epoch 2
    trainer = build_trainer(tiny_cfg(tiny_data, tmp_path / "pod2", "r", **opts))
    res = trainer.train()
    assert trainer.resumed and res["epochs_run"] == 3
    rows = (tmp_path / "pod2" / "r" / "results.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]
    # another configuration under the same name: not resumed, a new run
    other = build_trainer(tiny_cfg(tiny_data, tmp_path / "pod3", "r", **{**opts, "epochs": 1}))
    other.train()
    assert not other.resumed
    storage_s3._client.cache_clear()
