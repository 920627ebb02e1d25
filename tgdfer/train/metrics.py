"""WAR, UAR, per-class accuracy and the confusion matrix (DFER's metrics, paper §4.2).

WAR (weighted average recall) is plain accuracy over clips; UAR (unweighted average recall) is the mean of the
per-class recalls over the classes present in the test set. Both in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Scores:
    war: float  # percent
    uar: float  # percent, over classes with test clips
    per_class: np.ndarray  # (C,) recall in percent; NaN for classes without test clips
    confusion: np.ndarray  # (C, C) counts, rows true class, columns predicted

    def to_dict(self, class_names: tuple[str, ...]) -> dict:
        return {
            "war": self.war,
            "uar": self.uar,
            "per_class": {
                c: (None if np.isnan(v) else float(v)) for c, v in zip(class_names, self.per_class, strict=True)
            },
            "confusion": self.confusion.tolist(),
        }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows true, columns predicted."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> Scores:
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(
            f"expected equal, non-zero numbers of labels and predictions, found {len(y_true)} and {len(y_pred)}"
        )
    m = confusion_matrix(y_true, y_pred, num_classes)
    support = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(m) / support, np.nan) * 100.0
    return Scores(
        war=float(np.trace(m) / m.sum() * 100.0),
        uar=float(np.nanmean(recall)),
        per_class=recall,
        confusion=m,
    )


def summarize(metrics: list[dict]) -> dict:
    """Mean and standard deviation over folds of WAR, UAR and per-class accuracy; summed confusion."""
    war = np.array([m["war"] for m in metrics])
    uar = np.array([m["uar"] for m in metrics])
    classes = metrics[0]["class_names"]
    per_class = {c: [m["per_class"][c] for m in metrics if m["per_class"][c] is not None] for c in classes}
    return {
        "folds": [m["fold"] for m in metrics],
        "war_mean": float(war.mean()),
        "war_std": float(war.std()),
        "uar_mean": float(uar.mean()),
        "uar_std": float(uar.std()),
        "per_class_mean": {c: (float(np.mean(v)) if v else None) for c, v in per_class.items()},
        "confusion_sum": np.sum([np.array(m["confusion"]) for m in metrics], axis=0).tolist(),
        "class_names": classes,
    }
