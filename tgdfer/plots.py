"""PNG figures: the confusion matrix (paper Fig. 3), training curves, and the influence strip (Fig. 4).

matplotlib with the Agg backend, imported only when a figure is drawn, so servers without a display work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion_png(
    confusion: np.ndarray, class_names: tuple[str, ...] | list[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix in percent (rows: true class), counts summed over folds if given so."""
    plt = _pyplot()
    m = np.asarray(confusion, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    pct = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0) * 100.0
    n = len(class_names)
    size = max(4.5, 0.75 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{pct[i, j]:.1f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if pct[i, j] > 55 else "black",
            )
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def curves_png(history: list[dict], path: str | Path) -> Path:
    """Train loss, and test UAR/WAR where evaluated, per epoch."""
    plt = _pyplot()
    epochs = [int(r["epoch"]) for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    left.plot(epochs, [float(r["loss"]) for r in history], marker=".", color="tab:red")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss (cross-entropy)")
    left.grid(alpha=0.3)
    evaluated = [r for r in history if r.get("test_war") not in ("", None)]
    if evaluated:
        ep = [int(r["epoch"]) for r in evaluated]
        right.plot(ep, [float(r["test_war"]) for r in evaluated], marker=".", label="WAR (test)")
        right.plot(ep, [float(r["test_uar"]) for r in evaluated], marker=".", label="UAR (test)")
    right.plot(epochs, [float(r["train_acc"]) for r in history], linestyle="--", color="grey", label="train accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    right.set_ylim(0, 100)
    right.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle("training curves (reported: the final epoch)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def minmax(values: np.ndarray) -> np.ndarray:
    """Eq. 12: (x - min) / (max - min), for display only; a constant row maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def influence_png(
    frames: np.ndarray,
    influence: np.ndarray,
    path: str | Path,
    title: str = "",
    frame_numbers: np.ndarray | None = None,
    no_face: np.ndarray | None = None,
) -> Path:
    """Fig. 4: the T sampled frames in a row, with their min-max normalised influence as a colour bar beneath.

    frames (T, H, W, 3) uint8 RGB; influence (T,) raw instance scores of the explained class.
    """
    plt = _pyplot()
    t = len(frames)
    norm = minmax(influence)
    fig = plt.figure(figsize=(max(8.0, 1.05 * t), 2.9), dpi=100)
    grid = fig.add_gridspec(2, t, height_ratios=[4, 1], hspace=0.08, wspace=0.04)
    cmap = plt.get_cmap("viridis")  # purple (low) to yellow (high), as the paper's Fig. 4
    for i in range(t):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(frames[i])
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"#{int(frame_numbers[i])}" if frame_numbers is not None else str(i + 1)
        if no_face is not None and no_face[i]:
            label += " (no face)"
        ax.set_title(label, fontsize=7)
        bar = fig.add_subplot(grid[1, i])
        bar.imshow([[norm[i]]], cmap=cmap, vmin=0, vmax=1, aspect="auto")
        bar.set_xticks([])
        bar.set_yticks([])
        bar.set_xlabel(f"{norm[i]:.2f}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
