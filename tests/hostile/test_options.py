"""Hostile options and paths (issue 17): every training option given values a typo, a paste or an attacker would
give; the float options of the other commands; paths that are missing, folders, devices, garbage files, /proc,
YAML that is not a mapping or expands without bound. Each ends refused with a one-line message (the CLI: exit 2,
no traceback) or accepted as a valid value."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from kubedistill.cli import main
from kubedistill.config import TrainConfig, parse_cli_overrides, train_config
from kubedistill.core.errors import ConfigError

VALUES = ["inf", "-inf", "nan", "1e999", "-1", "0", "1e12", "", "abc", "[1, 2]", "{a: 1}", "../../x", "x" * 5000,
          "\u00e9\u2603", "0x10", "True", " 1 "]  # fmt: skip


def _check_valid(cfg: BaseModel) -> None:
    for name, value in cfg:
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
    assert "/" not in cfg.name and cfg.name not in (".", "..")


def test_every_training_option_refuses_or_takes_a_valid_value(hostile):
    for field in TrainConfig.model_fields:
        for value in VALUES:
            case = f"{field}={value[:20]!r}"
            try:
                cfg = train_config(**parse_cli_overrides([f"--{field}", value] if value else [f"{field}="]))
            except ConfigError as e:
                text = str(e)
                assert "\n" not in text and field in text, (case, text)
                hostile.record("options", case, "refused")
                continue
            _check_valid(cfg)
            hostile.record("options", case, "survived")
    dup = ["--epochs", "3", "epochs=4"]
    with pytest.raises(ConfigError, match="given twice"):
        parse_cli_overrides(dup)
    hostile.record("options", "a duplicate option", "refused")


def _run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    return int(e.value.code or 0), err


def _paths(tmp: Path) -> dict[str, Path]:
    (tmp / "folder").mkdir()
    (tmp / "garbage.pt").write_bytes(os.urandom(2048))
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "text.yaml").write_text("just a sentence, not a mapping\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "binary.yaml").write_bytes(bytes(range(256)))
    laughs = ["a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']"]
    for x, y in zip("bcdefghi", "abcdefgh"):
        laughs.append(f"{x}: &{x} [*{y},*{y},*{y},*{y},*{y},*{y},*{y},*{y},*{y}]")
    (tmp / "laughs.yaml").write_text("\n".join(laughs) + "\nnames: *i\n")
    os.mkfifo(tmp / "fifo.yaml")
    return {
        "missing": tmp / "nope" / "x.pt",
        "a folder": tmp / "folder",
        "/dev/null": Path("/dev/null"),
        "a FIFO": tmp / "fifo.yaml",
        "random bytes": tmp / "garbage.pt",
        "an empty file": tmp / "empty.pt",
        "text YAML": tmp / "text.yaml",
        "a YAML list": tmp / "list.yaml",
        "binary YAML": tmp / "binary.yaml",
        "a billion laughs": tmp / "laughs.yaml",
        "/proc": Path("/proc/self/status"),
    }


@pytest.mark.timeout(300)
def test_hostile_paths_and_values_end_in_one_line(tmp_path, capsys, monkeypatch, hostile):
    """The CLI given hostile paths and numbers: exit 2 and one `error:` line, never a traceback or a hang."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = _paths(tmp_path)
    commands = {
        "train data": lambda p: ["train", f"data={p}", "epochs=1", f"project={tmp_path / 'runs'}"],
        "train model": lambda p: ["train", f"model={p}", "data=x.yaml", f"project={tmp_path / 'runs'}"],
        "train cfg": lambda p: ["train", f"cfg={p}"],
        "val weights": lambda p: ["val", "--weights", str(p)],
        "predict weights": lambda p: ["predict", "--weights", str(p), "--source", str(tmp_path)],
        "export weights": lambda p: ["export", "--weights", str(p)],
        "data check": lambda p: ["data", "check", str(p)],
        "mlflow sync": lambda p: ["mlflow", "sync", str(p)],
        "info model": lambda p: ["info", str(p)],
    }
    for cmd, argv in commands.items():
        for what, p in paths.items():
            code, err = _run(argv(p), capsys)
            lines = [line for line in err.splitlines() if line.strip()]
            case = f"{cmd}: {what}"
            assert "Traceback" not in err, (case, err)
            if code == 0:  # e.g. `mlflow sync` of a folder with nothing to send
                hostile.record("CLI paths", case, "survived")
                continue
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case, code, err)
            hostile.record("CLI paths", case, "refused")
    # a refused run leaves no run folder behind (it left one with args.yaml per try), and nothing else is written
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    made = {p.name for p in tmp_path.iterdir()} - {p.name for p in paths.values()} - {"runs"}
    assert made == set(), made


def test_unknown_options_are_a_usage_error_not_a_traceback(capsys, hostile):
    """typer 0.16+ raises its own copy of click's exceptions: an unknown option ended in a traceback."""
    for argv in (["info", "--model", "x"], ["val", "--wieghts", "x"], ["serve", "--prot", "1"], ["nope"]):
        code, err = _run(argv, capsys)
        assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("Error: "), err
        hostile.record("CLI paths", f"unknown option {argv}", "refused")


RANGES = {"--conf": (0, 1), "--iou": (1e-9, 1), "--max-det": (1, 10_000), "--imgsz": (32, 8192), "--batch": (1, 4096)}


@pytest.mark.parametrize(
    "argv",
    [
        ["val", "--weights", "W", "--conf", "V"],
        ["val", "--weights", "W", "--iou", "V"],
        ["predict", "--weights", "W", "--source", "W", "--conf", "V"],
        ["predict", "--weights", "W", "--source", "W", "--iou", "V"],
        ["predict", "--weights", "W", "--source", "W", "--max-det", "V"],
        ["export", "--weights", "W", "--max-det", "V"],
        ["val", "--weights", "W", "--imgsz", "V"],
        ["val", "--weights", "W", "--batch", "V"],
    ],
    ids=lambda a: f"{a[0]} {a[-2]}",
)
def test_numbers_of_other_commands_are_checked_before_any_work(argv, tmp_path, capsys, monkeypatch, hostile):
    """A value out of range is refused, naming the option, before the weights are even opened (val took --conf
    nan and scored nothing); a value in range gets as far as the (missing) weights."""
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "missing.pt"
    lo, hi = RANGES[argv[-2]]
    for value in ("nan", "inf", "-1", "0", "0.5", "1e999", "99999999999", "64"):
        args = [str(weights) if a == "W" else value if a == "V" else a for a in argv]
        code, err = _run(args, capsys)
        case = f"{argv[0]} {argv[-2]} {value}"
        assert "Traceback" not in err and code == 2, (case, err)
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        valid = lo <= number <= hi and (argv[-2] in ("--conf", "--iou") or number == int(number))
        reached_weights = "missing.pt" in err
        assert reached_weights == valid, (case, err)
        hostile.record("CLI numbers", case, "survived" if valid else "refused")
