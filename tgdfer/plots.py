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


def _save(fig, path: str | Path, **kwargs) -> Path:
    """Write a figure as PNG (creating the folder) and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **kwargs)
    plt.close(fig)
    return path


def confusion_cells(confusion: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
    """(C, C) counts (rows true) -> ((C, C) percent of the true class, cell texts "45.0%" over "(9)")."""
    m = np.asarray(confusion, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    pct = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0) * 100.0
    texts = [[f"{pct[i, j]:.1f}%\n({int(m[i, j])})" for j in range(m.shape[1])] for i in range(m.shape[0])]
    return pct, texts


def confusion_png(
    confusion: np.ndarray, class_names: tuple[str, ...] | list[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows: true class): percent of the true class and, beneath, the count
    (summed over folds if given so)."""
    plt = _pyplot()
    pct, texts = confusion_cells(confusion)
    n = len(class_names)
    size = max(4.5, 0.75 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                texts[i][j],
                ha="center",
                va="center",
                fontsize=8,
                linespacing=1.1,
                color="white" if pct[i, j] > 55 else "black",
            )
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    fig.tight_layout()
    return _save(fig, path)


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
    validated = [r for r in history if r.get("val_war") not in ("", None)]
    if validated:  # the curves to choose an epoch on
        ep = [int(r["epoch"]) for r in validated]
        right.plot(ep, [float(r["val_war"]) for r in validated], marker="x", label="WAR (val)")
        right.plot(ep, [float(r["val_uar"]) for r in validated], marker="x", label="UAR (val)")
    right.plot(epochs, [float(r["train_acc"]) for r in history], linestyle="--", color="grey", label="train accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    right.set_ylim(0, 100)
    right.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle("training curves (reported: the final epoch)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# Fig. 4 layout in pixels at 100 dpi, so the PNG's size depends on T alone (never on the title's text). At most
# _PER_ROW frames per row (T = 16: two rows), so a figure shown at page width (~800 px) keeps thumbnails of
# ~85 px and text ~10 px high; one row of 16 was 2140 px wide, its 8-point text ~4 px high at that width.
_DPI = 100
_PER_ROW = 8
_CELL, _GAP = 160, 10  # frame thumbnail side and the gap between thumbnails
_LEFT, _RIGHT, _MIN_WIDTH = 24, 150, 640  # the right margin holds the colour scale
_TITLE, _LABEL, _BAR, _SPACE, _ROW_GAP, _BOTTOM = 70, 28, 38, 4, 16, 10  # heights, top to bottom
_TITLE_PT, _LABEL_PT, _VALUE_PT, _SCALE_PT = 16, 14, 14, 12  # font sizes in points


def _grid(t: int) -> tuple[int, int]:
    """(rows, columns) of thumbnails for T frames."""
    cols = min(t, _PER_ROW)
    return -(-t // cols), cols


def _row_height() -> int:
    return _LABEL + _CELL + _SPACE + _BAR + _ROW_GAP


def influence_png_size(t: int) -> tuple[int, int]:
    """(width, height) in pixels of ``influence_png``'s figure for T frames."""
    rows, cols = _grid(t)
    width = max(_MIN_WIDTH, _LEFT + cols * _CELL + (cols - 1) * _GAP + _RIGHT)
    return width, _TITLE + rows * _row_height() - _ROW_GAP + _BOTTOM


def influence_png(
    frames: np.ndarray,
    influence: np.ndarray,
    path: str | Path,
    title: str = "",
    frame_numbers: np.ndarray | None = None,
    no_face: np.ndarray | None = None,
) -> Path:
    """Fig. 4: the T sampled frames in rows of up to 8, with their min-max normalised influence as a colour bar
    beneath each.

    frames (T, H, W, 3) uint8 RGB; influence (T,) raw instance scores of the explained class; frame_numbers (T,)
    labels the frames (default 1..T); no_face (T,) bool marks frames where no face was found. The colour of the
    cell under each frame and the number in it are Eq. 12's value; purple is low, yellow high, as in the paper.
    The PNG is exactly ``influence_png_size(T)`` pixels.
    """
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    t = len(frames)
    if len(influence) != t:
        raise ValueError(f"influence: expected one value per frame ({t}), found {len(influence)}")
    from tgdfer.model.influence import minmax  # Eq. 12

    norm = minmax(influence)
    width, height = influence_png_size(t)
    rows, cols = _grid(t)
    strip = cols * _CELL + (cols - 1) * _GAP
    left = max(_LEFT, (width - _RIGHT - strip) // 2)  # centre a short strip under a title that needs the room
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    cmap = plt.get_cmap("viridis")  # purple (low) to yellow (high), as the paper's Fig. 4

    def box(x: float, top: float, w: float, h: float) -> list[float]:
        """Pixels from the figure's top-left -> matplotlib's [left, bottom, width, height] fractions."""
        return [x / width, 1 - (top + h) / height, w / width, h / height]

    for i in range(t):
        row, col = divmod(i, cols)
        x = left + col * (_CELL + _GAP)
        frame_top = _TITLE + row * _row_height() + _LABEL
        ax = fig.add_axes(box(x, frame_top, _CELL, _CELL))
        ax.imshow(frames[i])
        ax.set_axis_off()
        label = f"#{int(frame_numbers[i])}" if frame_numbers is not None else str(i + 1)
        missing = no_face is not None and bool(no_face[i])
        ax.set_title(
            label + (" no face" if missing else ""),
            fontsize=_LABEL_PT,
            color="tab:red" if missing else "black",
            pad=3,
        )
        bar = fig.add_axes(box(x, frame_top + _CELL + _SPACE, _CELL, _BAR))
        bar.imshow([[norm[i]]], cmap=cmap, vmin=0, vmax=1, aspect="auto")
        bar.set_xticks([])
        bar.set_yticks([])
        color = "black" if norm[i] > 0.6 else "white"
        bar.text(0, 0, f"{norm[i]:.2f}", ha="center", va="center", fontsize=_VALUE_PT, color=color)
    scale = fig.add_axes(box(left + strip + 30, _TITLE + _LABEL, 16, rows * _row_height() - _ROW_GAP - _LABEL))
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=scale, ticks=[0, 0.5, 1])
    scale.tick_params(labelsize=_SCALE_PT)
    scale.set_ylabel("influence", fontsize=_SCALE_PT)
    fig.suptitle(title, fontsize=_TITLE_PT, y=1 - 6 / height, va="top", wrap=True)  # two lines fit the title row
    return _save(fig, path, dpi=_DPI)  # no bbox_inches="tight": the size stays influence_png_size(T)


def row_bounds(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(W,) window starts and ends (s) -> (W+1,) the stretch of time each timeline row stands for: from the
    video's start to midway between its window's centre and the next, ..., to the video's end, so the rows' spans
    tile the video without gap or overlap although the windows overlap."""
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    centres = (starts + ends) / 2
    return np.concatenate([[starts[0]], (centres[1:] + centres[:-1]) / 2, [ends[-1]]])


def timeline_png(
    starts: np.ndarray,
    ends: np.ndarray,
    probs: np.ndarray,
    ok: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    path: str | Path,
    smoothed: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """An emotion timeline: each class's probability over time, windows without a face shaded grey, and beneath
    a strip coloured by each window's top class. starts, ends (W,) seconds; probs (W, C) (NaN where not ok);
    ok (W,) bool; smoothed (W, C) drawn bold over the raw lines (then thin) when given. 12 x 4.5 inches."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = list(class_names)
    starts, ends, ok = np.asarray(starts, float), np.asarray(ends, float), np.asarray(ok, bool)
    centres = (starts + ends) / 2
    bounds = row_bounds(starts, ends)  # (W+1,)
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors[: len(names)]
    minutes = ends[-1] > 300  # long videos read better in minutes
    scale = 60.0 if minutes else 1.0
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(12, 4.5), dpi=100, sharex=True, gridspec_kw={"height_ratios": [6, 1], "hspace": 0.08}
    )
    for c, name in enumerate(names):
        if smoothed is not None:
            ax.plot(centres / scale, probs[:, c], color=colours[c], lw=0.6, alpha=0.35)
            ax.plot(centres / scale, smoothed[:, c], color=colours[c], lw=1.8, label=name)
        else:
            ax.plot(centres / scale, probs[:, c], color=colours[c], lw=1.4, label=name)
    # grey spans over consecutive windows without a face, each window's own stretch of time (``bounds``)
    w = 0
    while w < len(ok):
        if ok[w]:
            w += 1
            continue
        first = w
        while w < len(ok) and not ok[w]:
            w += 1
        lo, hi = bounds[first], bounds[w]
        for axis in (ax, strip):
            axis.axvspan(lo / scale, hi / scale, color="0.85", zorder=0, lw=0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    handles = [*ax.get_legend_handles_labels()[0], Patch(color="0.85", label="no face")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9, frameon=False)
    source = smoothed if smoothed is not None else probs
    top = np.where(ok, np.nan_to_num(source, nan=-1.0).argmax(1), len(names)).astype(float)[None, :]  # (1, W)
    cmap = ListedColormap([*colours, (0.85, 0.85, 0.85)])
    strip.pcolormesh(bounds / scale, [0.0, 1.0], top, cmap=cmap, vmin=-0.5, vmax=len(names) + 0.5)
    strip.set_ylim(0, 1)
    strip.set_yticks([0.5], ["top"])
    strip.set_xlabel("time (min)" if minutes else "time (s)")
    ax.set_xlim(starts[0] / scale, ends[-1] / scale)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    fig.subplots_adjust(left=0.06, right=0.86, top=0.92, bottom=0.13)
    return _save(fig, path, dpi=100)
