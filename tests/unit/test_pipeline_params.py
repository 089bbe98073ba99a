"""Pipeline parameters: read from the spec, values typed, mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubedistill.core.errors import ConfigError
from kubedistill.pipeline.params import check_params, coerce, parse_assignments, pipeline_parameters, read_params_file

pytest.importorskip("kfp")

COMMITTED = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "training.yaml"


@pytest.fixture(scope="module")
def params():
    return pipeline_parameters(COMMITTED)


def test_parameters_from_package_equal_the_in_memory_pipeline(params):
    assert pipeline_parameters() == params
    assert params["teacher_epochs"] == {
        "type": "NUMBER_INTEGER",
        "default": 100,
        "description": "Teacher training epochs.",
    }
    assert list(params) == sorted(params)


def test_command_line_strings_are_typed(params):
    got = check_params(
        parse_assignments(
            [
                "imgsz=320",
                "lr0=0.02",
                "deploy_model=yes",
                'extra_config={"batch": 32}',
                "dataset_uri=s3://b/ds=1/",
                "class_names=1.10",
                "teacher-epochs=5",
            ]
        ),
        params,
    )
    assert got == {
        "imgsz": 320,
        "lr0": 0.02,
        "deploy_model": True,
        "extra_config": {"batch": 32},
        "dataset_uri": "s3://b/ds=1/",
        "class_names": "1.10",
        "teacher_epochs": 5,
    }


def test_yaml_values_are_checked(params):
    assert check_params({"imgsz": 64.0, "skip_if_unchanged": False, "extra_config": "mosaic: 0.5"}, params) == {
        "imgsz": 64,
        "skip_if_unchanged": False,
        "extra_config": {"mosaic": 0.5},
    }


@pytest.mark.parametrize(
    "name,value,words",
    [
        ("imgsz", "abc", "a whole number"),
        ("imgsz", 64.5, "a whole number"),
        ("imgsz", True, "a whole number"),
        ("lr0", "fast", "a number"),
        ("deploy_model", "maybe", "true or false"),
        ("extra_config", "[1, 2]", "a mapping"),
        ("dataset_uri", {"a": 1}, "text"),
    ],
)
def test_wrong_types_are_named(params, name, value, words):
    with pytest.raises(ConfigError) as e:
        check_params({name: value}, params)
    assert f"'{name}'" in str(e.value) and words in str(e.value)


def test_unknown_name_suggests_the_closest(params):
    with pytest.raises(
        ConfigError, match="Unknown pipeline parameter 'teacher_epoch' \\(did you mean 'teacher_epochs'\\?\\)"
    ):
        check_params({"teacher_epoch": 3}, params)


def test_assignment_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="is not NAME=VALUE"):
        parse_assignments(["imgsz"])
    with pytest.raises(ConfigError, match="does not exist"):
        read_params_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_params_file(bad)
    assert coerce("x", None, "STRING") == ""


def test_training_options_are_declared_once_in_train_config():
    """The pipeline's training parameters take default and description from TrainConfig; the training components
    declare no defaults of their own (the pipeline passes every option); extra_config may not set them again."""
    import yaml

    from kubedistill.config import TrainConfig
    from kubedistill.pipeline.dag import TRAIN_PARAMS
    from kubedistill.pipeline.params import pipeline_parameters
    from kubedistill.pipeline.steps import OWN_OPTIONS

    params = pipeline_parameters()
    fields = TrainConfig.model_fields
    for param, (name, _) in TRAIN_PARAMS.items():
        assert params[param]["default"] == fields[name].default, param
        assert fields[name].description[1:] in params[param]["description"], param
    assert {name for name, _ in TRAIN_PARAMS.values()} | {"model"} == set(OWN_OPTIONS)
    root = Path(__file__).resolve().parents[2]
    for comp in ("train-teacher", "distill-student"):
        spec = yaml.safe_load((root / "components" / f"{comp}.yaml").read_text())
        inputs = spec["root"]["inputDefinitions"]["parameters"]
        own = {k: v for k, v in inputs.items() if k in fields or k in ("teacher_model", "student_model")}
        assert {"epochs", "imgsz", "lr0", "optimizer"} <= set(own), comp
        for k, v in own.items():
            assert "defaultValue" not in v and not v.get("isOptional"), f"{comp}: {k} declares a default"
