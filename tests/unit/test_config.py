"""Config: names and values validated with messages naming them; YAML, keywords and CLI flags."""

import pytest

from kubedistill.config import TrainConfig, parse_cli_overrides, train_config
from kubedistill.core.errors import ConfigError


def test_defaults_follow_ultralytics():
    c = TrainConfig()
    assert (c.lr0, c.lrf, c.momentum, c.weight_decay, c.warmup_epochs, c.nbs, c.max_det, c.dis) == (
        0.01,
        0.01,
        0.937,
        0.0005,
        3.0,
        64,
        300,
        6.0,
    )


def test_unknown_name_suggests():
    with pytest.raises(ConfigError, match=r"unknown option 'epoch' \(did you mean 'epochs'\?\)"):
        train_config(epoch=3)


def test_bad_values_named():
    with pytest.raises(
        ConfigError, match=r"option 'imgsz' = 300: must be a multiple of 32 \(the largest stride\); try 288"
    ):
        train_config(imgsz=300)
    with pytest.raises(ConfigError, match="option 'lr0'"):
        train_config(lr0=-1)
    with pytest.raises(ConfigError, match="option 'optimizer'"):
        train_config(optimizer="adam")


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nimgsz: 320\ndistill-model: t.pt\n")
    c = train_config(f, epochs=9, optimizer="musgd")
    assert (c.epochs, c.imgsz, c.distill_model, c.optimizer) == (9, 320, "t.pt", "MuSGD")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        train_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        train_config(tmp_path / "missing.yaml")


def test_cli_overrides():
    d = parse_cli_overrides(
        ["--data", "d.yaml", "epochs=3", "--cos-lr", "--distill-model=t.pt", "--no-val", "--lr0", "0.02"]
    )
    assert d == {
        "data": "d.yaml",
        "epochs": "3",
        "cos_lr": "true",
        "distill_model": "t.pt",
        "val": "false",
        "lr0": "0.02",
    }
    c = train_config(**d)
    assert c.epochs == 3 and c.cos_lr is True and c.val is False and c.lr0 == 0.02
    assert train_config(resume="true").resume is True and train_config(resume="runs/x/weights/last.pt").resume.endswith(
        "last.pt"
    )
    with pytest.raises(ConfigError, match="Unexpected argument 'oops'"):
        parse_cli_overrides(["oops"])


def test_model_is_an_ordinary_option():
    assert train_config(None, model="yolo-s").model == "yolo-s"


def test_mlflow_tags_from_text():
    from kubedistill.config import train_config
    from kubedistill.core.errors import ConfigError

    assert train_config(mlflow_tags="{a: b, n: 3}").mlflow_tags == {"a": "b", "n": "3"}
    assert train_config(mlflow_tags="a=b,c=d=e").mlflow_tags == {"a": "b", "c": "d=e"}
    assert train_config(mlflow_tags="").mlflow_tags == {}
    with pytest.raises(ConfigError, match="mlflow_tags"):
        train_config(mlflow_tags="[1, 2]")
