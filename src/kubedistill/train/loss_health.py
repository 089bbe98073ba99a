"""Loss health: warnings when the training losses look wrong, naming the likely causes.

Checked each epoch on the per-epoch means of the sub-losses (box_loss, cls_loss, l1_loss, dis_loss):
- stalled vs vanished: one term has stopped moving while another has fallen to near zero, the usual
  sign of badly balanced gains or of a custom loss on the wrong scale;
- flat classification: cls_loss has barely moved since the start.
Each warning is given once per run.
"""

from __future__ import annotations

WINDOW = 3  # epochs a trend is judged over
STALL_REL = 0.01  # relative change under which a term counts as stalled
VANISHED_REL = 0.05  # a term below this fraction of its first value counts as near zero
FLAT_REL = 0.02  # cls_loss within this fraction of its first value counts as flat


def _rel_change(values: list[float]) -> float:
    a, b = values[0], values[-1]
    return abs(b - a) / max(abs(a), 1e-12)


def check_loss_health(history: dict[str, list[float]], already: set[str]) -> list[str]:
    """New warnings for the per-epoch sub-loss means in `history` ({name: [epoch1, epoch2, ...]}).

    `already` holds the warning keys given so far (updated in place), so each is said once.
    """
    out: list[str] = []
    n = min((len(v) for v in history.values()), default=0)
    if n < WINDOW + 1:
        return out
    recent = {k: v[-WINDOW:] for k, v in history.items()}
    vanished = [k for k, v in history.items() if v[0] > 0 and v[-1] < VANISHED_REL * v[0]]
    stalled = [k for k in history if k not in vanished and _rel_change(recent[k]) < STALL_REL and history[k][-1] > 0]
    for s in stalled:
        for v in vanished:
            key = f"stall:{s}:{v}"
            if key not in already:
                already.add(key)
                out.append(
                    f"loss health: {s} has stalled at {history[s][-1]:.4g} for {WINDOW} epochs while {v} fell to near zero "
                    f"({history[v][-1]:.3g} from {history[v][0]:.3g}). Likely causes: unbalanced gains (box/cls/l1/dis), "
                    f"a custom loss on the wrong scale, or labels the model cannot fit; check the gains and the plugin's output."
                )
    cls = history.get("cls_loss")
    if cls and "flat:cls" not in already and _rel_change(cls) < FLAT_REL:
        already.add("flat:cls")
        out.append(
            f"loss health: cls_loss has stayed flat ({cls[0]:.4g} -> {cls[-1]:.4g} over {len(cls)} epochs). Likely causes: "
            f"learning rate far too low or so high that scores saturate, class ids that do not match the images, "
            f"strong label smoothing, or a custom class loss whose gradient vanishes; try `kubedistill tune lr`."
        )
    return out
