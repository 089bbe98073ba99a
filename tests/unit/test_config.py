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
        None,  # 64 as Ultralytics', lowered for a short run (train.optim.resolve_nbs)
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


def _float_fields():
    from kubedistill.config import TrainConfig

    out = []
    for name, f in TrainConfig.model_fields.items():
        ann = str(f.annotation)
        if "float" in ann:
            out.append(name)
    return out


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", float("inf"), float("nan"), "1e400"])
def test_every_float_option_refuses_inf_and_nan(value):
    """lr0=inf passed validation and trained a model full of NaN (issue 17): no float option takes one now."""
    from kubedistill.config import train_config
    from kubedistill.core.errors import ConfigError

    names = _float_fields()
    assert {"lr0", "lrf", "box", "dis", "mosaic", "fl_alpha"} <= set(names)  # the walk sees the float options
    for name in names:
        with pytest.raises(ConfigError, match=f"option '{name}' = .*finite number"):
            train_config(**{name: value})


@pytest.mark.parametrize(
    "option,value",
    [("epochs", 10_000_000), ("imgsz", 64_000), ("batch", 1_000_000), ("workers", 10_000), ("nbs", 10**7)],
)
def test_typo_sized_values_are_refused(option, value):
    from kubedistill.config import train_config
    from kubedistill.core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"option '{option}' = {value}: Input should be less than or equal to"):
        train_config(**{option: value})


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "/abs", "a\\b", ""])
def test_run_name_cannot_leave_the_project(name):
    from kubedistill.config import train_config
    from kubedistill.core.errors import ConfigError

    with pytest.raises(ConfigError, match="option 'name'"):
        train_config(name=name)
    assert train_config(name="exp-2.b_c").name == "exp-2.b_c"


@pytest.mark.parametrize(
    "args", [["--epochs", "3", "epochs=4"], ["--lr0=0.1", "--lr0", "0.2"], ["--cos-lr", "--no-cos-lr"]]
)
def test_an_option_given_twice_is_an_error(args):
    from kubedistill.config import parse_cli_overrides
    from kubedistill.core.errors import ConfigError

    with pytest.raises(ConfigError, match="is given twice"):
        parse_cli_overrides(args)
