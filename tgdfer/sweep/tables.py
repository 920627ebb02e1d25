"""The paper's ablation tables (§4.4, Tables 3-6) as data: rows of config overrides with the paper's figures.

Every row is a set of ``--set`` overrides on top of the defaults of ``tgdfer train``, which are the paper's best
setting (Table 3 e = Table 4 s=1, w=4 = Table 5 h), so a default row and its twins in other tables train the
same run. Rows spell out every field their table varies, even where it equals the default, so a table reads the
same whatever the defaults become. Table 6 trains nothing of its own: it re-predicts a default run from only the
k frames of highest or lowest influence (``engine.evaluate(..., select=(order, k))``).

Paper figures are UAR and WAR in percent on DFEW, 5-fold mean, copied from the paper's tables. ``render`` writes
a result beside them as markdown and CSV.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from tgdfer.errors import ConfigError

PAPER_NOTE = (
    "Paper figures: DFEW, 5-fold mean, the authors' features and training. tgdfer keeps both CLIP encoders frozen "
    "(the paper's text says frozen; its implementation details list an image-encoder learning rate), so a gap to "
    "the paper can come from that reading as well as from the data."
)


@dataclass(frozen=True)
class Row:
    """One row of a paper table."""

    label: str  # the paper's row letter, or a name where the paper has none (Tables 4 and 6)
    overrides: tuple[str, ...]  # ``section.field=value`` applied after the seed, before the user's --set
    paper_uar: float  # the paper's figure for this row, %
    paper_war: float
    description: str  # the setting in words, for the report
    select: tuple[str, int] | None = None  # Table 6: ("highest"|"lowest", k) frames kept at inference


@dataclass(frozen=True)
class Table:
    """A paper table: a title and its rows in the paper's order."""

    number: str  # "3".."6"
    title: str
    rows: tuple[Row, ...]

    @property
    def evaluates(self) -> bool:
        """True for Table 6: rows evaluate a trained default run instead of training their own."""
        return any(r.select is not None for r in self.rows)

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise ConfigError(f"table {self.number}: expected a row of {[r.label for r in self.rows]}, found {label!r}")


def _depth(d: int) -> str:
    return "✗" if d == 0 else str(d)


# Table 3: depths of the fine and coarse temporal modules; ✗ (depth 0) removes the module.
_T3 = (
    ("a", 0, 0, 57.66, 69.14),
    ("b", 0, 1, 59.83, 71.34),
    ("c", 0, 2, 59.45, 71.18),
    ("d", 1, 0, 58.50, 69.24),
    ("e", 1, 1, 60.17, 71.62),
    ("f", 1, 2, 60.58, 71.46),
    ("g", 2, 0, 57.73, 69.27),
    ("h", 2, 1, 60.40, 71.51),
    ("i", 2, 2, 60.27, 71.51),
    ("j", 1, 7, 59.10, 70.93),
    ("k", 7, 1, 59.24, 70.84),
    ("l", 7, 7, 59.29, 70.92),
)

# Table 4: stride s and window width w of the fine module. "Stride ✗" is no overlap, s = w, spelt stride=0.
_T4 = (
    (0, 2, 59.58, 71.39),
    (0, 4, 59.58, 71.32),
    (0, 8, 59.50, 71.43),
    (1, 2, 59.59, 71.19),
    (1, 4, 60.17, 71.62),
    (1, 8, 59.83, 71.51),
    (2, 4, 60.09, 71.48),
    (2, 8, 59.76, 71.51),
    (3, 4, 59.81, 71.48),
)

# Table 5, tgdfer's reading: the "Text Prompt" column is the coarse prompt X^CP (its words, and whether a
# learnable context precedes them, "[Learnable]"); the fine prompt X^FP stays descriptors with a learnable
# context (Eq. 6) in every row. "Visual Prompt" is where V^P meets X^FP: off, add (Eq. 9) or prepend.
_T5 = (
    ("a", "class", False, "off", 59.12, 71.40),
    ("b", "class", False, "add", 60.07, 71.58),
    ("c", "class", False, "prepend", 59.58, 71.49),
    ("d", "descriptors", False, "off", 59.12, 71.34),
    ("e", "descriptors", False, "add", 60.23, 71.54),
    ("f", "descriptors", False, "prepend", 59.14, 71.43),
    ("g", "class", True, "off", 59.46, 71.07),
    ("h", "class", True, "add", 60.17, 71.62),
    ("i", "class", True, "prepend", 60.36, 71.47),
    ("j", "descriptors", True, "off", 58.56, 71.17),
    ("k", "descriptors", True, "add", 59.23, 71.32),
    ("l", "descriptors", True, "prepend", 59.75, 71.62),
)

# Table 6: inference from the k frames of highest / lowest influence of a trained default run.
_T6 = (
    ("highest", 1, 59.97, 71.12),
    ("highest", 2, 60.09, 71.27),
    ("highest", 3, 59.74, 71.12),
    ("lowest", 1, 55.41, 67.39),
    ("lowest", 2, 57.18, 68.88),
    ("lowest", 3, 58.00, 69.63),
)

TABLES: dict[str, Table] = {
    "3": Table(
        "3",
        "Multi-grained temporal network with different depths",
        tuple(
            Row(
                label,
                (f"model.fine_depth={f}", f"model.coarse_depth={c}"),
                u,
                w,
                f"fine {_depth(f)}, coarse {_depth(c)}",
            )
            for label, f, c, u, w in _T3
        ),
    ),
    "4": Table(
        "4",
        "Stride and window width of the fine-grained temporal network",
        tuple(
            Row(
                f"{'nostride' if s == 0 else f's{s}'}-w{win}",
                (f"model.stride={s}", f"model.window={win}"),
                u,
                w,
                f"{'no stride (s = w)' if s == 0 else f'stride {s}'}, window {win}",
            )
            for s, win, u, w in _T4
        ),
    ),
    "5": Table(
        "5",
        "Visual prompt location with different text prompts",
        tuple(
            Row(
                label,
                (
                    f"model.coarse_text={text}",
                    f"model.coarse_learnable={str(learn).lower()}",
                    f"model.visual_prompt={vp}",
                ),
                u,
                w,
                f"{'[Learnable] ' if learn else ''}{text.capitalize()}, visual prompt {vp}",
            )
            for label, text, learn, vp, u, w in _T5
        ),
    ),
    "6": Table(
        "6",
        "Inference from the frames of highest / lowest fine-grained influence",
        tuple(
            Row(f"{order}-{k}", (), u, w, f"{order} influence, {k} frame{'s' if k > 1 else ''}", (order, k))
            for order, k, u, w in _T6
        ),
    ),
}


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else "—"


def render(table: Table, summary: list[dict], context: str, dataset: str = "dfew") -> tuple[str, str]:
    """(markdown, csv) of per-row results, beside the paper's figures when the cache is DFEW's (``dataset``).

    ``summary`` holds one dict per row: label, setting, uar and war (lists over folds × seeds), runs, failed,
    paper_uar, paper_war. Means and stds are over those lists (std with ddof 0, as ``metrics.summarize``). The
    paper's figures are DFEW's, so for any other dataset they are left out (the CSV keeps its columns, empty).
    """
    paper = dataset == "dfew"
    header = ["row", "setting", "UAR (%)", "WAR (%)", "runs", *(["paper UAR", "paper WAR"] if paper else [])]
    lines = [f"# Table {table.number}: {table.title} (tgdfer)", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["row", "setting", "uar_mean", "uar_std", "war_mean", "war_std", "runs", "failed", "paper_uar", "paper_war"]
    )
    for s in summary:
        runs = f"{s['runs']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        cells = [s["label"], s["setting"], _cell(s["uar"]), _cell(s["war"]), runs]
        figures = [f"{s['paper_uar']:.2f}", f"{s['paper_war']:.2f}"] if paper else []
        lines.append("| " + " | ".join([*cells, *figures]) + " |")
        stats = [f"{f(s[m]):.4f}" if s[m] else "" for m in ("uar", "war") for f in (np.mean, np.std)]
        given = [s["paper_uar"], s["paper_war"]] if paper else ["", ""]
        writer.writerow([s["label"], s["setting"], *stats, s["runs"], s["failed"], *given])
    note = (
        PAPER_NOTE
        if paper
        else f"The paper's figures are DFEW's; this cache's dataset is {dataset}, so none are shown."
    )
    lines += ["", context, "", note, ""]
    return "\n".join(lines), buffer.getvalue()
