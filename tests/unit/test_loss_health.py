"""Loss-health warnings fire on the patterns they name, once, and stay quiet on healthy training."""

from kubedistill.train.loss_health import check_loss_health


def test_healthy_run_is_quiet():
    h = {
        "box_loss": [4.0, 3.5, 3.1, 2.8, 2.5],
        "cls_loss": [5.0, 4.2, 3.6, 3.2, 2.9],
        "l1_loss": [0.2, 0.18, 0.16, 0.15, 0.13],
    }
    assert check_loss_health(h, set()) == []


def test_stalled_while_other_vanished_warns_once():
    h = {"box_loss": [4.0, 3.0, 3.0, 3.0, 3.0], "cls_loss": [5.0, 1.0, 0.2, 0.1, 0.05]}
    said = set()
    warnings = check_loss_health(h, said)
    assert len(warnings) == 1 and "box_loss has stalled" in warnings[0] and "cls_loss fell to near zero" in warnings[0]
    assert check_loss_health(h, said) == []  # said once


def test_flat_classification_warns():
    h = {"box_loss": [4.0, 3.5, 3.0, 2.6, 2.2], "cls_loss": [5.0, 5.02, 4.99, 5.01, 4.98]}
    warnings = check_loss_health(h, set())
    assert len(warnings) == 1 and "cls_loss has stayed flat" in warnings[0] and "tune lr" in warnings[0]


def test_too_early_to_judge():
    assert check_loss_health({"cls_loss": [5.0, 5.0, 5.0]}, set()) == []
