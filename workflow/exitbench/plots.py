"""Figures of a study: one function per figure, each writing ``<stem>.pdf`` and ``.png``.

Every figure function takes a :class:`Study` (the summary table, the per-layer
curves, the score JSONs and the claim statistics) and an output folder, and
returns the two paths it wrote. Figures draw what the aggregate stage wrote
(``results/statistics.json``) and never recompute a statistic, so a figure and
the table cannot disagree; which models a panel shows comes from
:mod:`exitbench.selection`, as in the statistics. Figures render for any study: with one
model, no release dates, no checkpoints or no base/tuned pairs a panel says
so in its middle instead of failing.

Conventions shared by all figures: one colour per architecture class
(:data:`ARCH_COLORS`, Okabe-Ito; models of one class get shades of it), one
marker per workload, axes labelled with their units. Output is byte-stable:
the Agg backend, fixed rcParams, and no timestamps in PDF or PNG metadata.
"""

from __future__ import annotations

import colorsys
import functools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.cm  # noqa: E402
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from . import aggregate, selection  # noqa: E402
from .tables import read_table  # noqa: E402
from .zoo.plan import zoo_run_dir  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "ARCH_COLORS",
    "FIGURES",
    "METRIC_LABELS",
    "Study",
    "agreement_curves",
    "arch_comparison",
    "base_vs_tuned",
    "checkpoints",
    "control_vs_base",
    "decode_realised",
    "figures_from_files",
    "load_study",
    "model_colors",
    "params_trend",
    "release_trend",
    "render_all",
    "saturation_hist",
    "speculative_k",
    "speculative_points",
    "tradeoff",
]

#: Colour of each architecture class (Okabe-Ito, colour-blind safe); grey for unknown.
ARCH_COLORS: dict[str, str] = {
    "dense": "#0072B2",
    "moe": "#E69F00",
    "ssm": "#009E73",
    "hybrid": "#CC79A7",
}
UNKNOWN_COLOR = "#7F7F7F"
WORKLOAD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Headline metrics shown in the trend and comparison figures.
FIGURE_METRICS = (
    "oracle_savings",
    "savings_at_99",
    "consistency_savings_auc",
    "net_flop_savings_at_99",
)
METRIC_LABELS: dict[str, str] = {
    "savings_first": "first-agreement savings S_first\n(share of layers skipped)",
    "oracle_savings": "settled savings S_settled\n(share of layers skipped)",
    "savings_at_99": "savings at 99% consistency\n(share of layers skipped)",
    "savings_at_95": "savings at 95% consistency\n(share of layers skipped)",
    "consistency_savings_auc": "consistency-savings AUC\n(area, 0-1)",
    "oracle_net_flop_savings": "net FLOP savings at e_sat\n(share of FLOPs saved)",
    "net_flop_savings_at_99": "net FLOP savings at 99%\n(share of FLOPs saved)",
}
METRIC_TITLES: dict[str, str] = {
    "savings_first": "S_first (first agreement: the bound)",
    "oracle_savings": "S_settled (settled prediction)",
    "savings_at_99": "Savings at 99% consistency",
    "savings_at_95": "Savings at 95% consistency",
    "consistency_savings_auc": "Consistency-savings AUC",
    "oracle_net_flop_savings": "Net FLOP savings at e_sat",
    "net_flop_savings_at_99": "Net FLOP savings at 99%",
}
RC_PARAMS: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "lines.markersize": 5,
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "pdf.fonttype": 42,
    "svg.hashsalt": "exitbench",
    "path.simplify": False,
    "axes.formatter.useoffset": False,
}
DPI = 150
PANEL_WIDTH, PANEL_HEIGHT = 3.3, 2.6
CREATOR = "exitbench"


# ---------------------------------------------------------------- data


@dataclass
class Study:
    """Everything the figures read.

    ``summary``: the aggregate table (schema ``summary``); ``curves``: the
    concatenated per-layer tables (schema ``scores``) of the ``ok`` pairs;
    ``statistics``: the rows of ``results/statistics.json`` (columns
    :data:`exitbench.aggregate.STATISTICS_COLUMNS`), as the aggregate stage
    wrote them; ``headlines``: score JSON per ``(model, workload)``; ``decode``: the
    decode JSON (realised beside predicted decoding) per decoded ``(model, workload)``.
    """

    summary: pd.DataFrame
    curves: pd.DataFrame
    statistics: pd.DataFrame
    headlines: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    decode: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def workloads(self) -> list[str]:
        return list(pd.unique(self.summary["workload"]))

    def ok(self, workload: str | None = None) -> pd.DataFrame:
        rows = self.summary[self.summary["status"] == "ok"]
        return rows if workload is None else rows[rows["workload"] == workload]


def _existing(paths: Iterable[str | Path]) -> list[Path]:
    return [Path(p) for p in paths if Path(p).exists()]


def load_study(
    summary_path: str | Path,
    statistics_path: str | Path,
    curves_paths: Iterable[str | Path] = (),
    headline_paths: Iterable[str | Path] = (),
    decode_paths: Iterable[str | Path] = (),
) -> Study:
    """Read a study's files; missing curves/JSON files (failed pairs) are skipped.

    ``statistics_path`` is ``results/statistics.json`` (written by the aggregate stage);
    ``decode_paths`` the decode stage's ``results/decode/{model}/{workload}.json``.
    """
    summary = read_table(summary_path, "summary").to_pandas()
    tables = [read_table(p, "scores") for p in _existing(curves_paths)]
    tables = [table.to_pandas() for table in tables if table.num_rows]  # failed pairs: no rows
    curves = pd.concat(tables, ignore_index=True) if tables else _empty_curves()
    headlines = {}
    for path in _existing(headline_paths):
        data = json.loads(path.read_text())
        if data.get("status", "ok") == "ok" and "headline" in data:
            headlines[(data["model"], data["workload"])] = data
    rows = json.loads(Path(statistics_path).read_text())["rows"]
    statistics = pd.DataFrame(rows, columns=list(aggregate.STATISTICS_COLUMNS))
    decode = {}
    for path in _existing(decode_paths):
        data = json.loads(path.read_text())
        decode[(data.get("model", path.parent.name), data.get("workload", path.stem))] = data
    return Study(summary, curves, statistics, headlines, decode)


def _empty_curves() -> pd.DataFrame:
    return pd.DataFrame(
        columns=["model", "workload", "layer", "layer_fraction", "agreement", "saturation_count"]
    )


# ---------------------------------------------------------------- style


def _shade(color: str, amount: float) -> tuple[float, float, float]:
    """``color`` lightened (amount > 0, towards white) or darkened (amount < 0)."""
    h, lightness, s = colorsys.rgb_to_hls(*mcolors.to_rgb(color))
    lightness = lightness + (1 - lightness) * amount if amount > 0 else lightness * (1 + amount)
    return colorsys.hls_to_rgb(h, min(max(lightness, 0.0), 1.0), s)


def arch_color(arch: Any) -> str:
    return ARCH_COLORS.get(arch, UNKNOWN_COLOR) if isinstance(arch, str) else UNKNOWN_COLOR


def _model_order(summary: pd.DataFrame) -> list[str]:
    """Models sorted by class, family, release, size, training step, name."""
    first = summary.drop_duplicates("model").copy()
    classes = list(ARCH_COLORS)
    first["_class"] = [
        classes.index(a) if isinstance(a, str) and a in classes else len(classes)
        for a in first["arch"]
    ]
    first = first.sort_values(
        ["_class", "family", "release_year", "total_params", "training_step", "model"],
        na_position="last",
        kind="stable",
    )
    return first["model"].tolist()


def model_colors(summary: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """One colour per model: its class colour, in shades from dark to light within the class."""
    colors = {}
    first = summary.drop_duplicates("model").set_index("model")
    order = _model_order(summary)
    by_class: dict[str, list[str]] = {}
    for model in order:
        by_class.setdefault(arch_color(first.loc[model, "arch"]), []).append(model)
    for color, models in by_class.items():
        amounts = np.linspace(-0.35, 0.45, len(models)) if len(models) > 1 else [0.0]
        for model, amount in zip(models, amounts, strict=True):
            colors[model] = _shade(color, float(amount))
    return colors


def _workload_marker(study: Study, workload: str) -> str:
    return WORKLOAD_MARKERS[study.workloads.index(workload) % len(WORKLOAD_MARKERS)]


def _figure(nrows: int, ncols: int, width: float = PANEL_WIDTH, height: float = PANEL_HEIGHT):
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, height * nrows),
        squeeze=False,
        layout="constrained",
    )
    return fig, axes


def _message(ax: plt.Axes, text: str) -> None:
    """Centre ``text`` in an empty panel."""
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=9,
        color="#555555",
        wrap=True,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _save(fig: plt.Figure, out_dir: str | Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, metadata in [
        ("pdf", {"Creator": CREATOR, "Producer": CREATOR, "CreationDate": None}),
        ("png", {"Software": CREATOR}),
    ]:
        path = out_dir / f"{stem}.{ext}"
        tmp = out_dir / f".{stem}.tmp.{ext}"
        fig.savefig(tmp, dpi=DPI, metadata=metadata, format=ext)
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


def _single_message_figure(out_dir: str | Path, stem: str, text: str) -> list[Path]:
    fig, axes = _figure(1, 1, 4.5, 2.0)
    _message(axes[0, 0], text)
    return _save(fig, out_dir, stem)


def _grid(n_panels: int, max_cols: int = 2) -> tuple[int, int]:
    ncols = min(n_panels, max_cols)
    return math.ceil(n_panels / ncols), ncols


def _legend_handles(
    study: Study, archs: Iterable[Any], with_workloads: bool = True
) -> list[Line2D]:
    handles = []
    present = {a if isinstance(a, str) else None for a in archs}
    for arch in [*ARCH_COLORS, None]:
        if arch in present:
            handles.append(
                Line2D(
                    [],
                    [],
                    color=arch_color(arch),
                    marker="o",
                    linestyle="",
                    label=arch or "unknown class",
                )
            )
    if with_workloads and len(study.workloads) > 1:
        for workload in study.workloads:
            handles.append(
                Line2D(
                    [],
                    [],
                    linestyle="",
                    label=f"workload {workload}",
                    **_marker_style(study, workload, "#555555"),
                )
            )
    return handles


def _figure_legend(fig: plt.Figure, handles: Sequence[Any], ncol: int | None = None) -> None:
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=ncol or _legend_columns(fig, handles),
        )


def _legend_columns(fig: plt.Figure, handles: Sequence[Any]) -> int:
    """Columns of a figure legend: one row when it fits the figure's width, else balanced
    rows. An entry is as wide as the longest label (about 0.55 em per character at the
    legend's font size) plus its handle and padding, so long labels wrap into more rows
    instead of running off the canvas."""
    size = FontProperties(size=plt.rcParams["legend.fontsize"]).get_size_in_points()
    longest = max((len(str(h.get_label())) for h in handles), default=0)
    entry = 0.55 * size / 72 * longest + 0.75
    fits = max(1, int(fig.get_figwidth() / entry))
    rows = math.ceil(len(handles) / fits)
    return math.ceil(len(handles) / rows)


def _errorbar(ax, x: float, row: pd.Series, metric: str, color: Any, style: dict) -> None:
    """One point with its 95% CI as a vertical bar."""
    y = row[metric]
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    yerr = None
    if pd.notna(low) and pd.notna(high):
        yerr = [[max(y - low, 0.0)], [max(high - y, 0.0)]]
    ax.errorbar(
        [x],
        [y],
        yerr=yerr,
        color=color,
        markersize=5,
        elinewidth=0.9,
        capsize=0,
        linestyle="",
        **style,
    )


def _stat(study: Study, analysis: str, workload: str, metric: str, group: str) -> dict | None:
    stats = study.statistics
    hit = stats[
        (stats["analysis"] == analysis)
        & (stats["workload"] == workload)
        & (stats["metric"] == metric)
        & (stats["group"] == group)
    ]
    return None if hit.empty else hit.iloc[0].to_dict()


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}g}"


def _label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    """Small labels right of the points, skipped where one would overlap an earlier label.

    Overlap is judged in axes fractions from the current limits (no draw needed).
    """
    ax.autoscale_view()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    log_x = ax.get_xscale() == "log"

    def fraction(x: float, y: float) -> tuple[float, float]:
        if log_x:
            fx = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        else:
            fx = (x - x0) / (x1 - x0) if x1 != x0 else 0.5
        return fx, (y - y0) / (y1 - y0) if y1 != y0 else 0.5

    placed: list[tuple[float, float, float]] = []
    for x, y, text in sorted(zip(xs, ys, labels, strict=True), key=lambda t: (t[1], t[0])):
        fx, fy = fraction(x, y)
        width = 0.012 * len(text) + 0.02
        if any(fx < qx + qw and qx < fx + width and abs(fy - qy) < 0.06 for qx, qy, qw in placed):
            continue
        placed.append((fx, fy, width))
        ax.annotate(
            text,
            (x, y),
            xytext=(4, 2),
            textcoords="offset points",
            fontsize=5.5,
            color="#333333",
        )


def _styled(function: Callable[[Study, str | Path], list[Path]]):
    """Run a figure function under the fixed :data:`RC_PARAMS` (byte-stable output)."""

    @functools.wraps(function)
    def wrapper(study: Study, out_dir: str | Path) -> list[Path]:
        with plt.rc_context(RC_PARAMS):
            return function(study, out_dir)

    return wrapper


# ---------------------------------------------------------------- figures


def _marker_style(study: Study, workload: str, color: Any) -> dict[str, Any]:
    """Marker of a workload: the first filled, the others hollow, edge in ``color``."""
    first = study.workloads.index(workload) == 0 if workload in study.workloads else True
    return {
        "marker": _workload_marker(study, workload),
        "markerfacecolor": color if first else "none",
        "markeredgecolor": "white" if first else color,
        "markeredgewidth": 0.5 if first else 1.0,
    }


def _panel_colors(rows: pd.DataFrame, models: Sequence[str]) -> dict[str, Any]:
    """Class colours, shaded apart for models of one class shown in the same panel."""
    by_class: dict[str, list[str]] = {}
    for model in models:
        by_class.setdefault(arch_color(_meta(rows, model, "arch")), []).append(model)
    colors = {}
    for color, members in by_class.items():
        amounts = np.linspace(-0.4, 0.4, len(members)) if len(members) > 1 else [0.0]
        for model, amount in zip(members, amounts, strict=True):
            colors[model] = _shade(color, float(amount))
    return colors


@_styled
def agreement_curves(study: Study, out_dir: str | Path) -> list[Path]:
    """Agreement with the final top-1 vs layer / L, one line per model, one panel per family.

    One block of rows per workload. Intermediate checkpoints are left out (see
    :func:`checkpoints`); bands are the 95% bootstrap CIs over documents;
    tuned models are dashed.
    """
    stem = "agreement_curves"
    blocks: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for workload in study.workloads:
        rows = study.ok(workload)
        shown = set(selection.curve_models(rows)["model"])
        order = [m for m in _model_order(rows) if m in shown]
        families = list(dict.fromkeys(_family(_meta(rows, m, "family")) for m in order))
        panels = [
            (family, [m for m in order if _family(_meta(rows, m, "family")) == family])
            for family in families
        ]
        if panels:
            blocks.append((workload, panels))
    if not blocks:
        return _single_message_figure(out_dir, stem, "no scored models in this study")
    ncols = min(max(len(panels) for _, panels in blocks), 3)
    block_rows = [math.ceil(len(panels) / ncols) for _, panels in blocks]
    fig, axes = _figure(sum(block_rows), ncols, PANEL_WIDTH, 2.4)
    used = set()
    start = 0
    multi = len(study.workloads) > 1
    for (workload, panels), n_rows in zip(blocks, block_rows, strict=True):
        rows = study.ok(workload)
        for k, (family, models) in enumerate(panels):
            r, c = start + k // ncols, k % ncols
            used.add((r, c))
            ax = axes[r, c]
            colors = _panel_colors(rows, models)
            for model in models:
                curve = _curve(study, model, workload)
                if curve.empty:
                    continue
                tuned = _meta(rows, model, "tuning") == "tuned"
                ax.plot(
                    curve["layer_fraction"],
                    curve["agreement"],
                    color=colors[model],
                    linestyle="--" if tuned else "-",
                    label=model,
                )
                if curve["agreement_ci_low"].notna().any():
                    ax.fill_between(
                        curve["layer_fraction"],
                        curve["agreement_ci_low"],
                        curve["agreement_ci_high"],
                        color=colors[model],
                        alpha=0.18,
                        linewidth=0,
                    )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{family} · {workload}" if multi else family)
            ax.set_xlabel("layer / L")
            if c == 0:
                ax.set_ylabel("agreement with final top-1\n(share of tokens)")
            ax.legend(loc="upper left", handlelength=1.8)
        start += n_rows
    for r in range(axes.shape[0]):
        for c in range(axes.shape[1]):
            if (r, c) not in used:
                axes[r, c].set_visible(False)
    handles = _legend_handles(study, study.ok()["arch"], with_workloads=False)
    handles.append(Line2D([], [], color="#444444", linestyle="--", label="tuned model"))
    handles.append(
        matplotlib.patches.Patch(facecolor="#CCCCCC", label="95% bootstrap CI over documents")
    )
    _figure_legend(fig, handles)
    return _save(fig, out_dir, stem)


def _family(value: Any) -> str:
    return value if isinstance(value, str) else "unknown family"


def _meta(rows: pd.DataFrame, model: str, column: str) -> Any:
    values = rows.loc[rows["model"] == model, column]
    return values.iloc[0] if len(values) and pd.notna(values.iloc[0]) else None


def _curve(study: Study, model: str, workload: str) -> pd.DataFrame:
    curves = study.curves
    part = curves[(curves["model"] == model) & (curves["workload"] == workload)]
    return part.sort_values("layer")


def _independent(study: Study) -> pd.DataFrame:
    parts = [
        selection.independent_models(study.summary[study.summary["workload"] == workload])
        for workload in study.workloads
    ]
    return pd.concat(parts) if parts else study.summary.iloc[:0]


TREND_STYLES = ("--", ":", "-.")


def _trend_figure(
    study: Study,
    out_dir: str | Path,
    stem: str,
    analysis: str,
    x_of: Callable[[pd.DataFrame], pd.Series],
    x_label: str,
    empty_text: str,
    log_x: bool,
    slope_unit: str,
    figure_note: Callable[[pd.DataFrame], str | None] | None = None,
) -> list[Path]:
    metrics = FIGURE_METRICS
    points = _independent(study)
    with_x = points[x_of(points).notna()]
    if with_x.empty:
        return _single_message_figure(out_dir, stem, empty_text)
    nrows, ncols = _grid(len(metrics))
    fig, axes = _figure(nrows, ncols, 3.6, 2.9)
    note = figure_note(with_x) if figure_note is not None else None
    if note:
        fig.suptitle(note, fontsize=8, color="#A0301E")
    n_work = len(study.workloads)
    label_models = 0 < with_x["model"].nunique() <= 14
    trend_drawn: set[int] = set()
    for ax, metric in zip(axes.flat, metrics, strict=True):
        ax.set_title(METRIC_TITLES[metric])
        shown = with_x[with_x[metric].notna()]
        if shown.empty:
            _message(ax, f"no values of {metric} in this study")
            continue
        x_all = x_of(shown).to_numpy(dtype=float)
        span = np.log10(x_all.max() / x_all.min()) if log_x else x_all.max() - x_all.min()
        notes = []
        for wi, workload in enumerate(study.workloads):
            part = shown[shown["workload"] == workload]
            if part.empty:
                continue
            xs = x_of(part).astype(float)
            # workloads side by side, so equal x never hides a point
            dodge = (wi - (n_work - 1) / 2) * 0.02 * (span or 1.0)
            for index, row in part.iterrows():
                x = xs[index] * 10**dodge if log_x else xs[index] + dodge
                color = arch_color(row["arch"])
                _errorbar(ax, x, row, metric, color, _marker_style(study, workload, color))
            stat = _stat(study, analysis, workload, metric, "all")
            prefix = f"{workload}: " if n_work > 1 else ""
            if stat and pd.notna(stat["estimate"]):
                ends = np.log10([xs.min(), xs.max()]) if log_x else np.array([xs.min(), xs.max()])
                line_x = np.linspace(ends[0], ends[1], 50)
                line_y = stat["intercept"] + stat["estimate"] * line_x
                trend_drawn.add(wi)
                ax.plot(
                    10**line_x if log_x else line_x,
                    line_y,
                    color="#333333",
                    linestyle=TREND_STYLES[wi % len(TREND_STYLES)],
                    linewidth=1.0,
                    zorder=1,
                )
                ci = (
                    f"[{_fmt(stat['ci_low'], 2)}, {_fmt(stat['ci_high'], 2)}]"
                    if pd.notna(stat["ci_low"])
                    else f"({aggregate.TOO_SMALL} for a CI)"
                )
                notes.append(
                    f"{prefix}slope {_fmt(stat['estimate'], 2)}{slope_unit} {ci}, "
                    f"ρ = {_fmt(stat['spearman_rho'], 2)}, n = {stat['n']}"
                )
            elif stat:
                notes.append(f"{prefix}{stat['note']}")
        if label_models:
            first = shown.drop_duplicates("model")
            _label_points(ax, x_of(first).tolist(), first[metric].tolist(), first["model"].tolist())
        if log_x:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.set_xlabel(x_label)
        ax.set_ylabel(METRIC_LABELS[metric])
        low = shown[f"{metric}_ci_low"].fillna(shown[metric]).min()
        high = shown[f"{metric}_ci_high"].fillna(shown[metric]).max()
        height = (high - low) or 0.1
        # room under the data for the notes, so they never cover a point
        ax.set_ylim(low - height * (0.06 + 0.1 * len(notes)), high + height * 0.08)
        if span > 0:
            ax.margins(x=0.1)
        elif log_x:  # a single x value: a decade around it
            ax.set_xlim(x_all.min() / 10**0.5, x_all.min() * 10**0.5)
        else:
            ax.set_xlim(x_all.min() - 1, x_all.min() + 1)
        if notes:
            ax.text(
                0.02,
                0.02,
                "\n".join(notes),
                transform=ax.transAxes,
                fontsize=6,
                va="bottom",
                ha="left",
                color="#333333",
            )
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    handles = _legend_handles(study, with_x["arch"])
    for wi in sorted(trend_drawn):
        label = f"OLS trend ({study.workloads[wi]})" if n_work > 1 else "OLS trend"
        style = TREND_STYLES[wi % len(TREND_STYLES)]
        handles.append(Line2D([], [], color="#333333", linestyle=style, linewidth=1.0, label=label))
    _figure_legend(fig, handles)
    return _save(fig, out_dir, stem)


def _is_zoo_model(path: Any) -> bool:
    return isinstance(path, str) and zoo_run_dir(path) is not None


def zoo_date_note(points: pd.DataFrame) -> str | None:
    """What the release-date figure must say when some of its models are zoo models
    (``path`` under ``results/zoo/``), whose release dates are labels we assigned."""
    zoo = points.drop_duplicates("model")["path"].map(_is_zoo_model)
    if zoo.empty or not zoo.any():
        return None
    if zoo.all():
        return "Release dates are assigned labels (zoo models trained here), not history"
    return f"Release dates of the {int(zoo.sum())} zoo models are assigned labels, not history"


@_styled
def release_trend(study: Study, out_dir: str | Path) -> list[Path]:
    """Headline suitability vs release date, coloured by class, OLS trend lines.

    One point per independent model (see
    :func:`exitbench.selection.independent_models`) with its 95% CI; the
    annotation gives the slope per year with its t-based CI, Spearman's rho
    and n, as in ``results/statistics.csv``.
    """
    return _trend_figure(
        study,
        out_dir,
        "release_trend",
        "release_trend",
        lambda rows: rows["release_year"],
        "release date (year)",
        "no release dates in this study",
        log_x=False,
        slope_unit="/yr",
        figure_note=zoo_date_note,
    )


@_styled
def params_trend(study: Study, out_dir: str | Path) -> list[Path]:
    """Headline suitability vs active parameters (log x; an MoE's per-token count, total
    parameters where no active count is given), OLS trend per decade of parameters."""
    return _trend_figure(
        study,
        out_dir,
        "params_trend",
        "params_trend",
        lambda rows: aggregate.active_params(rows).where(aggregate.active_params(rows) > 0),
        "active parameters (count, log scale)",
        "no parameter counts in this study",
        log_x=True,
        slope_unit="/decade",
    )


@_styled
def arch_comparison(study: Study, out_dir: str | Path) -> list[Path]:
    """Mean of each headline metric per architecture class with 95% bootstrap CIs.

    Bars are class means over independent models, black bars their CIs, dots
    the models themselves.
    """
    stem = "arch_comparison"
    metrics = FIGURE_METRICS
    points = _independent(study)
    if points.empty:
        return _single_message_figure(out_dir, stem, "no scored models in this study")
    nrows, ncols = _grid(len(metrics))
    fig, axes = _figure(nrows, ncols, 3.4, 2.6)
    present: list[str | None] = [c for c in ARCH_COLORS if (points["arch"] == c).any()]
    present += sorted(set(points["arch"].dropna()) - set(ARCH_COLORS))
    if points["arch"].isna().any():
        present.append(None)
    n_work = len(study.workloads)
    width = 0.75 / max(n_work, 1)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        ax.set_title(METRIC_TITLES[metric])
        valid = points[points[metric].notna()]
        if valid.empty:
            _message(ax, f"no values of {metric} in this study")
            continue
        for ci, arch in enumerate(present):
            in_class = valid["arch"].isna() if arch is None else valid["arch"] == arch
            color = arch_color(arch)
            for wi, workload in enumerate(study.workloads):
                part = valid[in_class & (valid["workload"] == workload)]
                if part.empty:
                    continue
                x = ci + (wi - (n_work - 1) / 2) * width
                # the class mean as the statistics table has it (none for models of no class)
                stat = _stat(study, "class_mean", workload, metric, arch) if arch else None
                mean = stat["estimate"] if stat else math.nan
                if stat:
                    ax.bar(
                        x,
                        mean,
                        width=width * 0.85,
                        color=color,
                        alpha=0.3,
                        edgecolor=color,
                        linewidth=0.8,
                    )
                offsets = np.linspace(-0.28, 0.28, len(part)) * width if len(part) > 1 else [0]
                style = _marker_style(study, workload, color)
                for offset, value in zip(offsets, part[metric], strict=True):
                    ax.plot([x + offset], [value], linestyle="", markersize=4, zorder=3, **style)
                if stat and pd.notna(stat["ci_low"]):
                    ax.errorbar(
                        [x],
                        [mean],
                        yerr=[[mean - stat["ci_low"]], [stat["ci_high"] - mean]],
                        color="#222222",
                        capsize=3,
                        elinewidth=1.1,
                        linestyle="",
                        zorder=4,
                    )
                elif stat and str(stat.get("note") or "").startswith(aggregate.TOO_SMALL):
                    ax.annotate(  # vertical: fits over a bar beside another workload's
                        f"{aggregate.TOO_SMALL} (n = {stat['n']})",
                        (x, max(mean, part[metric].max())),
                        xytext=(0, 4),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        rotation=90,
                        fontsize=5.5,
                        color="#555555",
                    )
        ax.set_xticks(range(len(present)), [a or "unknown" for a in present])
        ax.set_xlabel("architecture class")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_xlim(-0.6, len(present) - 0.4)
        ax.grid(axis="x", visible=False)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    handles: list[Any] = [
        matplotlib.patches.Patch(facecolor="#D0D0D0", edgecolor="#777777", label="class mean"),
        Line2D(
            [],
            [],
            color="#222222",
            marker="|",
            markersize=10,
            linestyle="",
            label=f"95% bootstrap CI over models (n >= {aggregate.MIN_CLASS_CI_MODELS})",
        ),
        Line2D(
            [],
            [],
            color="#777777",
            marker="o",
            linestyle="",
            markersize=4,
            markeredgecolor="white",
            label="one model",
        ),
    ]
    if n_work > 1:
        handles += _legend_handles(study, [], with_workloads=True)
    _figure_legend(fig, handles)
    return _save(fig, out_dir, stem)


@_styled
def base_vs_tuned(study: Study, out_dir: str | Path) -> list[Path]:
    """Paired differences tuned - base per pair with CIs, and their mean (forest plot)."""
    stem = "base_vs_tuned"
    pairs = _pairs(study, selection.tuned_pairs)
    if not pairs:
        return _single_message_figure(out_dir, stem, "no base/tuned pairs in this study")
    metrics = FIGURE_METRICS
    nrows, ncols = _grid(len(metrics))
    fig, axes = _figure(nrows, ncols, 3.7, _forest_height(pairs))
    for ax, metric in zip(axes.flat, metrics, strict=True):
        ax.set_title(METRIC_TITLES[metric])
        # same rows in every panel: label them once
        label_rows = ax.get_subplotspec().colspan.start == 0
        _difference_panel(ax, study, metric, pairs, "base_vs_tuned", "tuned − base", label_rows)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    tuned_archs = [_meta(study.ok(w), t, "arch") for w, t, _ in pairs]
    handles = _legend_handles(study, tuned_archs, with_workloads=False)
    handles[:0] = _difference_handles()
    _figure_legend(fig, handles, ncol=min(len(handles), 4))
    return _save(fig, out_dir, stem)


#: Headline metrics of the control figure: S_first and savings at 99% are the control check's.
CONTROL_METRICS = ("savings_first", "oracle_savings", "savings_at_99", "net_flop_savings_at_99")


@_styled
def control_vs_base(study: Study, out_dir: str | Path) -> list[Path]:
    """Each positive control (``control: true``) beside its ``base_model``: per metric, the
    two models' own values with their bootstrap CIs (summary), and the paired difference
    control - base with its paired document bootstrap CI (``control_vs_base_pair`` rows of
    the statistics) and the mean over pairs (``control_vs_base``)."""
    stem = "control_vs_base"
    pairs = _pairs(study, selection.control_pairs)
    if not pairs:
        return _single_message_figure(
            out_dir,
            stem,
            "no control in this study\n(no model with control: true\nbeside its base_model)",
        )
    metrics = CONTROL_METRICS
    fig, axes = _figure(len(metrics), 2, 3.7, _forest_height(pairs, levels=True))
    for (values, difference), metric in zip(axes, metrics, strict=True):
        values.set_title(METRIC_TITLES[metric])
        _levels_panel(values, study, metric, pairs)
        difference.set_title("control − base (paired)")
        _difference_panel(difference, study, metric, pairs, "control_vs_base", "control − base")
    archs = [_meta(study.ok(w), c, "arch") for w, c, _ in pairs]
    handles = _legend_handles(study, archs, with_workloads=False)
    handles[:0] = [
        Line2D([], [], color="#555555", marker="o", linestyle="-", label="control (bootstrap CI)"),
        Line2D(
            [],
            [],
            color=_shade("#555555", LEVEL_BASE_SHADE),
            marker="s",
            linestyle="-",
            label="its base model (bootstrap CI)",
        ),
        *_difference_handles(),
    ]
    _figure_legend(fig, handles, ncol=min(len(handles), 3))
    return _save(fig, out_dir, stem)


#: How much lighter a base model is drawn than its control in :func:`control_vs_base`.
LEVEL_BASE_SHADE = 0.45


def _pairs(
    study: Study, pairs_of: Callable[[pd.DataFrame], list[tuple[str, str]]]
) -> list[tuple[str, str, str]]:
    """``(workload, first, second)`` of every pair ``pairs_of`` finds in a workload's ok rows."""
    return [
        (workload, first, second)
        for workload in study.workloads
        for first, second in pairs_of(study.ok(workload))
    ]


def _forest_height(pairs: Sequence[tuple[str, str, str]], levels: bool = False) -> float:
    """Panel height of a forest plot: a row per pair (two with ``levels``) and per workload."""
    n_pairs, n_workloads = len(pairs), len({w for w, _, _ in pairs})
    n_rows = max(2 * n_pairs, n_pairs + n_workloads) if levels else n_pairs + n_workloads
    return max(1.7, 0.75 + 0.22 * n_rows)


def _difference_handles() -> list[Line2D]:
    return [
        Line2D(
            [],
            [],
            color="#777777",
            marker="o",
            linestyle="-",
            label="pair (paired document bootstrap CI)",
        ),
        Line2D(
            [],
            [],
            color="#222222",
            marker="D",
            linestyle="-",
            label="mean difference (t-based 95% CI)",
        ),
    ]


def _difference_panel(
    ax,
    study: Study,
    metric: str,
    pairs: Sequence[tuple[str, str, str]],
    analysis: str,
    difference: str,
    label_rows: bool = True,
) -> bool:
    """Forest plot of the paired differences ``first - second`` of ``metric``: one row per pair
    (the statistics' ``{analysis}_pair`` rows) and per workload their mean (``analysis``,
    group ``all``; a note where it has no CI). Returns whether any pair had a value."""
    labels: list[str] = []
    drawn = False
    multi = len(study.workloads) > 1
    for workload in study.workloads:
        rows = [(first, second) for w, first, second in pairs if w == workload]
        if not rows:
            continue
        suffix = f" ({workload})" if multi else ""
        for first, second in rows:
            stat = _stat(study, f"{analysis}_pair", workload, metric, f"{first} - {second}")
            if stat and pd.notna(stat["estimate"]):
                color = arch_color(_meta(study.ok(workload), first, "arch"))
                _forest_point(ax, len(labels), stat, color, "o")
                drawn = True
            labels.append(f"{first} − {second}{suffix}")
        stat = _stat(study, analysis, workload, metric, "all")
        if stat and pd.notna(stat["estimate"]):
            _forest_point(ax, len(labels), stat, "#222222", "D")
            if pd.isna(stat["ci_low"]):
                ax.annotate(
                    f"no CI (n = {stat['n']})",
                    (stat["estimate"], len(labels)),
                    xytext=(5, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=6,
                    color="#555555",
                )
        labels.append(f"mean of {stat['n'] if stat else 0} pair(s){suffix}")
    if not drawn:
        _message(ax, f"no values of {metric} for the pairs")
        return False
    ax.axvline(0, color="#555555", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels)
    if not label_rows:
        ax.tick_params(labelleft=False)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    unit = METRIC_LABELS[metric].split("\n")[-1]
    ax.set_xlabel(f"{difference}\n{unit}")
    ax.grid(axis="y", visible=False)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.margins(x=0.1)
    return True


def _levels_panel(ax, study: Study, metric: str, pairs: Sequence[tuple[str, str, str]]) -> None:
    """Each pair's two models' own values of ``metric`` with their 95% bootstrap CIs over
    documents (summary columns), one row per model: the first in its class colour, the
    second lighter."""
    labels: list[str] = []
    multi = len(study.workloads) > 1
    for workload, first, second in pairs:
        rows = study.ok(workload)
        color = arch_color(_meta(rows, first, "arch"))
        for model, marker, shade in ((first, "o", 0.0), (second, "s", LEVEL_BASE_SHADE)):
            row = rows[rows["model"] == model]
            if len(row) and pd.notna(row[metric].iloc[0]):
                point = {
                    "estimate": row[metric].iloc[0],
                    "ci_low": row[f"{metric}_ci_low"].iloc[0],
                    "ci_high": row[f"{metric}_ci_high"].iloc[0],
                }
                _forest_point(ax, len(labels), point, _shade(color, shade), marker)
            labels.append(f"{model}" + (f" ({workload})" if multi else ""))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(METRIC_LABELS[metric])
    ax.grid(axis="y", visible=False)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.margins(x=0.1)


def _forest_point(
    ax, y: float, stat: Mapping[str, Any], color, marker: str, hollow: bool = False
) -> None:
    x = stat["estimate"]
    xerr = None
    if pd.notna(stat["ci_low"]) and pd.notna(stat["ci_high"]):
        xerr = [[x - stat["ci_low"]], [stat["ci_high"] - x]]
    ax.errorbar(
        [x],
        [y],
        xerr=xerr,
        color=color,
        marker=marker,
        linestyle="",
        capsize=2,
        elinewidth=1.0,
        markersize=5,
        markerfacecolor="white" if hollow else color,
    )


CHECKPOINT_METRICS = (("oracle_savings", "-"), ("savings_at_99", "--"))


@_styled
def checkpoints(study: Study, out_dir: str | Path) -> list[Path]:
    """Per training run (row): savings vs training step, and agreement curves per checkpoint."""
    stem = "checkpoints"
    runs = sorted(set(study.ok()["checkpoint_of"].dropna()))
    if not runs:
        return _single_message_figure(out_dir, stem, "no checkpoint runs in this study")
    n_work = len(study.workloads)
    fig, axes = _figure(len(runs), 1 + n_work, 3.2, 2.5)
    for r, run in enumerate(runs):
        ax = axes[r, 0]
        for workload in study.workloads:
            members = selection.checkpoint_runs(study.ok(workload)).get(run)
            if members is None or members.empty:
                continue
            steps = members["training_step"].astype(float) + 1
            base = arch_color(members["arch"].iloc[-1])
            for metric, style in CHECKPOINT_METRICS:
                color = _shade(base, -0.3 if metric == "oracle_savings" else 0.25)
                ax.errorbar(
                    steps,
                    members[metric],
                    yerr=_yerr(members, metric),
                    color=color,
                    linestyle=style,
                    linewidth=1.1,
                    elinewidth=0.8,
                    markersize=4,
                    **_marker_style(study, workload, color),
                )
        ax.set_xscale("log")
        # labels on decades only: minor-tick labels of a short log range collide
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{run}: savings vs training")
        ax.set_xlabel("1 + training step (log scale)")
        ax.set_ylabel("savings\n(share of layers skipped)")
        for w, workload in enumerate(study.workloads):
            ax = axes[r, 1 + w]
            members = selection.checkpoint_runs(study.ok(workload)).get(run)
            ax.set_title(f"{run}: agreement" + (f" · {workload}" if n_work > 1 else ""))
            if members is None or members.empty:
                _message(ax, f"no checkpoints of {run}\nscored on {workload}")
                continue
            base = arch_color(members["arch"].iloc[-1])
            amounts = np.linspace(0.65, -0.4, len(members)) if len(members) > 1 else [0.0]
            for (_, member), amount in zip(members.iterrows(), amounts, strict=True):
                curve = _curve(study, member["model"], workload)
                step = member["training_step"]
                ax.plot(
                    curve["layer_fraction"],
                    curve["agreement"],
                    color=_shade(base, amount),
                    label=f"step {int(step):,}" if pd.notna(step) else member["model"],
                )
                if "agreement_ci_low" in curve and curve["agreement_ci_low"].notna().any():
                    ax.fill_between(
                        curve["layer_fraction"],
                        curve["agreement_ci_low"],
                        curve["agreement_ci_high"],
                        color=_shade(base, amount),
                        alpha=0.18,
                        linewidth=0,
                    )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("layer / L")
            ax.set_ylabel("agreement with final top-1\n(share of tokens)")
            # beside the panel, so it never covers a curve
            ax.legend(
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                borderaxespad=0,
                title="checkpoint",
                title_fontsize=7,
            )
    handles: list[Any] = [
        Line2D([], [], color="#555555", linestyle=style, label=METRIC_TITLES[metric])
        for metric, style in CHECKPOINT_METRICS
    ]
    if n_work > 1:
        handles += _legend_handles(study, [], with_workloads=True)
    handles.append(
        Line2D(
            [],
            [],
            color="#555555",
            marker="|",
            markersize=10,
            linestyle="",
            label="95% bootstrap CI",
        )
    )
    handles.append(
        matplotlib.patches.Patch(facecolor="#CCCCCC", label="agreement: 95% bootstrap CI")
    )
    _figure_legend(fig, handles)
    return _save(fig, out_dir, stem)


def _yerr(rows: pd.DataFrame, metric: str) -> np.ndarray | None:
    low, high = rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"]
    if low.isna().any() or high.isna().any():
        return None
    return np.vstack([(rows[metric] - low).clip(lower=0), (high - rows[metric]).clip(lower=0)])


@_styled
def saturation_hist(study: Study, out_dir: str | Path) -> list[Path]:
    """Distribution of the saturation layer e_sat per model (rows), over layer / L.

    Cell l of a model spans ((l-1)/L, l/L]; its colour is the share of tokens
    with e_sat = l divided by the cell width 1/L (a density, comparable across
    depths). The black tick marks the mean saturation layer E[e_sat]/L.
    """
    stem = "saturation_hist"
    order = _model_order(study.summary)
    if study.curves.empty or study.ok().empty:
        return _single_message_figure(out_dir, stem, "no scored models in this study")
    n_work = len(study.workloads)
    fig, axes = _figure(1, n_work, 3.6, max(2.4, 1.0 + 0.24 * len(order)))
    densities = {}
    for workload in study.workloads:
        for model in order:
            curve = _curve(study, model, workload)
            curve = curve[curve["layer"] >= 1]
            total = curve["saturation_count"].sum() if not curve.empty else 0
            if total > 0:
                num_layers = int(curve["layer"].max())
                densities[(model, workload)] = (
                    num_layers,
                    curve["layer"].to_numpy(),
                    curve["saturation_count"].to_numpy() / total * num_layers,
                )
    vmax = max((d[2].max() for d in densities.values()), default=1.0)
    norm = mcolors.PowerNorm(gamma=0.5, vmin=0, vmax=vmax)
    cmap = plt.get_cmap("magma_r")
    tick_colors = {m: arch_color(_meta(study.summary, m, "arch")) for m in order}
    for w, workload in enumerate(study.workloads):
        ax = axes[0, w]
        rows = study.summary[study.summary["workload"] == workload]
        for y, model in enumerate(order):
            if (model, workload) not in densities:
                status = _meta(rows, model, "status")
                ax.text(
                    0.5,
                    y,
                    "failed" if status == "failed" else "not scored",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="#777777",
                )
                continue
            num_layers, layers, density = densities[(model, workload)]
            ax.broken_barh(
                [((layer - 1) / num_layers, 1 / num_layers) for layer in layers],
                (y - 0.42, 0.84),
                facecolors=cmap(norm(density)),
                edgecolor="none",
            )
            mean_layer = _meta(rows, model, "mean_saturation_layer")
            if mean_layer is not None:
                ax.plot(
                    [mean_layer / num_layers] * 2,
                    [y - 0.45, y + 0.45],
                    color="black",
                    linewidth=1.2,
                )
        ax.set_yticks(range(len(order)), order)
        for label, model in zip(ax.get_yticklabels(), order, strict=True):
            label.set_color(_shade(tick_colors[model], -0.25))
        if w:
            ax.tick_params(labelleft=False)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("saturation layer e_sat / L")
        ax.set_title("Saturation layer" + (f" · {workload}" if n_work > 1 else ""))
        ax.grid(False)
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=axes[0, -1], label="density\n(share of tokens × L)", shrink=0.9)
    handles = [Line2D([], [], color="black", linewidth=1.2, label="mean e_sat / L")]
    handles += _legend_handles(study, study.summary["arch"], with_workloads=False)
    _figure_legend(fig, handles)
    return _save(fig, out_dir, stem)


@_styled
def tradeoff(study: Study, out_dir: str | Path) -> list[Path]:
    """Held-out consistency vs savings of each model's threshold sweep, 99% policy marked.

    The sweep is that of the measure behind ``savings_at_99`` (the score
    JSON's ``best_measure["0.99"]``); the star is its calibration-chosen
    threshold evaluated on the held-out documents. Intermediate checkpoints
    are left out.
    """
    stem = "tradeoff"
    if not study.headlines:
        return _single_message_figure(out_dir, stem, "no score JSONs with sweeps in this study")
    colors = model_colors(study.summary)
    order = _model_order(study.ok())
    n_work = len(study.workloads)
    fig, axes = _figure(1, n_work, 3.8, 3.2)
    handles: dict[str, Line2D] = {}
    for w, workload in enumerate(study.workloads):
        ax = axes[0, w]
        shown = set(selection.curve_models(study.ok(workload))["model"])
        for model in order:
            data = study.headlines.get((model, workload))
            if data is None or model not in shown:
                continue
            measure = data.get("best_measure", {}).get("0.99")
            points = sorted(
                (p["savings"], p["consistency"])
                for p in data.get("sweeps", {}).get(measure) or []
                if p.get("savings") is not None and p.get("consistency") is not None
            )
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            style = "--" if _meta(study.ok(workload), model, "tuning") == "tuned" else "-"
            ax.plot(xs, ys, color=colors[model], linestyle=style, linewidth=1.2)
            handles.setdefault(
                model,
                Line2D([], [], color=colors[model], linestyle=style, label=f"{model} ({measure})"),
            )
            policy = data.get("policies", {}).get(measure, {}).get("0.99")
            if policy:
                s, c = policy["savings"]["estimate"], policy["consistency"]["estimate"]
                if s is not None and c is not None:
                    ax.plot(
                        [s],
                        [c],
                        marker="*",
                        markersize=9,
                        color=colors[model],
                        markeredgecolor="black",
                        markeredgewidth=0.5,
                        linestyle="",
                    )
        ax.axhline(0.99, color="#555555", linestyle=":", linewidth=0.9)
        ax.set_xlim(0, 1)
        ax.set_ylim(top=1.005)
        ax.set_xlabel("savings (share of layers skipped)")
        if w == 0:
            ax.set_ylabel("consistency with the full model\n(share of tokens)")
        ax.set_title("Held-out trade-off" + (f" · {workload}" if n_work > 1 else ""))
    extra = [
        Line2D(
            [],
            [],
            color="#444444",
            marker="*",
            markersize=9,
            linestyle="",
            markeredgecolor="black",
            markeredgewidth=0.5,
            label="policy chosen for 99%\n(held-out)",
        ),
        Line2D([], [], color="#555555", linestyle=":", label="99% consistency"),
    ]
    entries = [*handles.values(), *extra]
    fig.legend(
        handles=entries,
        loc="outside right upper",
        ncol=1 if len(entries) <= 20 else 2,
        title="model (exit measure)",
    )
    return _save(fig, out_dir, stem)


#: Figure stem -> function (stems are fixed: tests, the Snakefile and the report use them).
#: (summary column, label) of the potential-vs-realised figure's savings panel, left to right.
DECODE_SAVINGS = (
    ("savings_first", "oracle S_first (lens)"),
    ("oracle_savings", "oracle S_settled (lens)"),
    ("savings_at_99", "policy at 99% (lens)"),
    ("decode_recompute_block_savings", "realised blocks (recompute)"),
    ("decode_recompute_flop_savings", "realised FLOPs (recompute)"),
    ("decode_propagate_flop_savings", "realised FLOPs (propagate)"),
)
#: (summary column, label) of its speed-up panel.
DECODE_SPEEDUPS = (
    ("decode_recompute_wall_speedup", "early exit, recompute (wall)"),
    ("decode_propagate_wall_speedup", "early exit, propagate (wall)"),
    ("decode_speculative_wall_speedup", "self-speculative (wall)"),
    ("decode_speculative_pass_cost_speedup", "self-speculative (pass cost)"),
    # the pass-cost prediction under its first column name
    ("decode_speculative_predicted_flop_speedup", "self-speculative (pass cost, predicted)"),
    ("decode_speculative_flop_speedup", "self-speculative (FLOPs)"),
)


@_styled
def decode_realised(study: Study, out_dir: str | Path) -> list[Path]:
    """Potential vs realised per model: the lens's two oracles and 99%-policy savings beside
    the block and FLOP savings measured in free greedy generation (decode stage), and the
    realised speed-ups over full decoding (1 = none), the self-speculative pass-cost one
    beside its prediction (one cost model). Draws the summary's columns as aggregate wrote
    them (a column the summary lacks, as in older studies, draws no bar)."""
    stem = "decode_realised"
    summary = study.ok()
    if (
        "decode_full_tokens_per_s" not in summary
        or summary["decode_full_tokens_per_s"].isna().all()
    ):
        return _single_message_figure(out_dir, stem, "no decode results in this study")
    workloads = [
        w
        for w in study.workloads
        if summary[summary["workload"] == w]["decode_full_tokens_per_s"].notna().any()
    ]
    fig, axes = _figure(2, len(workloads), max(4.0, 0.9 * summary["model"].nunique() + 1.5), 2.6)
    palette = plt.get_cmap("tab10")
    for w, workload in enumerate(workloads):
        rows = summary[
            (summary["workload"] == workload) & summary["decode_full_tokens_per_s"].notna()
        ]
        order = [m for m in _model_order(rows) if m in set(rows["model"])]
        rows = rows.set_index("model").loc[order]
        x = np.arange(len(order))
        for panel, (columns, ylabel) in enumerate(
            ((DECODE_SAVINGS, "savings (share)"), (DECODE_SPEEDUPS, "speed-up over full (x)"))
        ):
            ax = axes[panel, w]
            width = 0.8 / len(columns)
            for i, (column, label) in enumerate(columns):
                values = rows[column] if column in rows else pd.Series(np.nan, index=rows.index)
                values = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
                ax.bar(x - 0.4 + (i + 0.5) * width, values, width, color=palette(i), label=label)
            ax.axhline(1.0 if panel else 0.0, color="#555555", linewidth=0.8, linestyle="--")
            ax.set_xticks(x)
            ax.set_xticklabels(order, rotation=30, ha="right")
            ax.set_ylabel(ylabel)
            if panel == 0:
                ax.set_title(f"{workload}: potential (lens) vs realised (decode)")
            if w == len(workloads) - 1:  # right of the last column: clear of every panel
                ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, out_dir, stem)


#: (column, label, colour, line style, hollow marker) of the speed-ups in :func:`speculative_k`.
SPECULATIVE_SERIES = (
    (
        "pass_cost_speedup",
        "realised, pass cost (a pass = c_L, a draft = c_k)",
        "#0072B2",
        "-",
        False,
    ),
    (
        "predicted_pass_cost_speedup",
        "predicted from the lens (α_k), pass cost",
        "#555555",
        "--",
        True,
    ),
    ("flop_speedup", "realised, FLOPs: 1 / (1 − FLOP savings)", "#009E73", "-.", False),
    ("wall_speedup", "realised, wall clock", "#D55E00", ":", False),
)
GAMMA_MARKERS = ("o", "s", "^", "D", "v")


def _flop_speedup(savings: Any) -> float:
    """FLOP speed-up over full decoding from the decode stage's FLOP savings: 1 / (1 - s)."""
    if savings is None or pd.isna(savings) or savings >= 1:
        return math.nan
    return 1.0 / (1.0 - float(savings))


def speculative_points(data: Mapping[str, Any]) -> pd.DataFrame:
    """One row per self-speculative variant of a decode JSON, sorted by gamma and k: the
    realised pass-cost speed-up (``pass_cost_speedup``: the prediction's cost model on the
    counted drafts and passes) and the one the lens predicted (``predicted.self_speculative``),
    the realised FLOP speed-up ``1 / (1 - flop_savings)`` (its CI the same map of the FLOP
    savings' CI, which is monotone) and the wall-clock speed-up, each with its CI."""
    predicted = data.get("predicted", {}).get("self_speculative", {})
    columns = ["k", "gamma"] + [
        f"{name}{end}" for name, *_ in SPECULATIVE_SERIES for end in ("", "_ci_low", "_ci_high")
    ]
    rows = []
    for name, entry in data.get("realised", {}).items():
        if entry.get("method") != "self_speculative":
            continue
        guess = predicted.get(name, {})
        row = dict.fromkeys(columns, math.nan)
        row["k"], row["gamma"] = (
            entry.get("k", guess.get("k")),
            entry.get("gamma", guess.get("gamma")),
        )
        savings = entry.get("flop_savings") or {}
        for end, key in (("", "estimate"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            row[f"flop_speedup{end}"] = _flop_speedup(savings.get(key))
            for name in ("wall_speedup", "pass_cost_speedup"):  # older JSONs: no pass cost
                value = (entry.get(name) or {}).get(key)
                row[f"{name}{end}"] = math.nan if value is None else float(value)
        # flop_speedup: the prediction's first name (the same pass-cost number)
        value = guess.get("pass_cost_speedup", guess.get("flop_speedup"))
        row["predicted_pass_cost_speedup"] = math.nan if value is None else float(value)
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns).dropna(subset=["k", "gamma"])
    return table.astype({"k": int, "gamma": int}).sort_values(["gamma", "k"], ignore_index=True)


@_styled
def speculative_k(study: Study, out_dir: str | Path) -> list[Path]:
    """Self-speculative decoding against the draft depth k, one panel per decoded model (and
    workload): the realised pass-cost speed-up beside the one predicted from the lens (open
    markers, dashed; the same cost model), and the realised FLOP and wall-clock speed-ups,
    each realised one with its bootstrap CI over prompts, one series per gamma; 1 = full
    decoding."""
    stem = "speculative_k"
    order = _model_order(study.summary)
    keys = sorted(
        (key for key in study.decode if not speculative_points(study.decode[key]).empty),
        key=lambda key: (
            order.index(key[0]) if key[0] in order else len(order),
            study.workloads.index(key[1]) if key[1] in study.workloads else 0,
            key,
        ),
    )
    if not keys:
        return _single_message_figure(
            out_dir, stem, "no self-speculative decoding in this study\n(decode stage)"
        )
    nrows, ncols = _grid(len(keys), 4)
    fig, axes = _figure(nrows, ncols, 2.6, 2.2)
    multi = len({w for _, w in keys}) > 1
    gammas = sorted({g for key in keys for g in speculative_points(study.decode[key])["gamma"]})
    low, high = 1.0, 1.0
    for ax, key in zip(axes.flat, keys, strict=False):
        points = speculative_points(study.decode[key])
        num_layers = study.decode[key].get("num_layers") or int(points["k"].max()) + 1
        for gi, gamma in enumerate(gammas):
            part = points[points["gamma"] == gamma]
            marker = GAMMA_MARKERS[gi % len(GAMMA_MARKERS)]
            shade = (gi - (len(gammas) - 1) / 2) * 0.5 / max(len(gammas) - 1, 1)
            for si, (column, _, color, style, hollow) in enumerate(SPECULATIVE_SERIES):
                values = part[column].to_numpy(dtype=float)
                if part.empty or np.isnan(values).all():
                    continue
                color = _shade(color, shade)
                err = None
                if f"{column}_ci_low" in part and part[f"{column}_ci_low"].notna().all():
                    err = np.vstack(
                        [
                            (values - part[f"{column}_ci_low"]).clip(lower=0),
                            (part[f"{column}_ci_high"] - values).clip(lower=0),
                        ]
                    )
                    low = min(low, float(np.nanmin(part[f"{column}_ci_low"])))
                    high = max(high, float(np.nanmax(part[f"{column}_ci_high"])))
                low, high = min(low, float(np.nanmin(values))), max(high, float(np.nanmax(values)))
                # the three series side by side, so their bars never hide each other
                ax.errorbar(
                    part["k"].to_numpy(dtype=float)
                    + (si - (len(SPECULATIVE_SERIES) - 1) / 2) * 0.1,
                    values,
                    yerr=err,
                    color=color,
                    linestyle=style,
                    marker=marker,
                    markerfacecolor="white" if hollow else color,
                    markeredgecolor=color,
                    markersize=4.5,
                    linewidth=1.1,
                    elinewidth=0.8,
                    capsize=0,
                )
        ax.axhline(1.0, color="#333333", linewidth=0.8, zorder=0)
        ax.set_xlim(0.5, num_layers - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{key[0]} · {key[1]}" if multi else key[0])
        ax.set_xlabel(f"draft depth k (blocks of L = {num_layers})")
        if ax.get_subplotspec().colspan.start == 0:
            ax.set_ylabel("speed-up over full decoding (x)")
    pad = 0.06 * (high - low or 1.0)
    for ax in axes.flat[: len(keys)]:
        ax.set_ylim(low - pad, high + pad)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    handles: list[Any] = [
        Line2D(
            [],
            [],
            color=color,
            linestyle=style,
            marker="o",
            markerfacecolor="white" if hollow else color,
            label=label,
        )
        for _, label, color, style, hollow in SPECULATIVE_SERIES
    ]
    handles.append(Line2D([], [], color="#333333", linewidth=0.8, label="1 = full decoding"))
    handles.append(
        Line2D(
            [],
            [],
            color="#555555",
            marker="|",
            markersize=9,
            linestyle="",
            label="95% bootstrap CI over prompts",
        )
    )
    if len(gammas) > 1:
        handles += [
            Line2D(
                [],
                [],
                color="#555555",
                marker=GAMMA_MARKERS[gi % len(GAMMA_MARKERS)],
                linestyle="",
                label=f"γ = {gamma} drafted tokens",
            )
            for gi, gamma in enumerate(gammas)
        ]
    notes = [] if multi else [f"workload {keys[0][1]}"]
    if len(gammas) == 1:
        notes.append(f"γ = {gammas[0]} drafted tokens per verification pass")
    if notes:
        fig.suptitle(" · ".join(notes), fontsize=8)
    _figure_legend(fig, handles, ncol=min(len(handles), 3))
    return _save(fig, out_dir, stem)


FIGURES: dict[str, Callable[[Study, str | Path], list[Path]]] = {
    "agreement_curves": agreement_curves,
    "release_trend": release_trend,
    "arch_comparison": arch_comparison,
    "params_trend": params_trend,
    "base_vs_tuned": base_vs_tuned,
    "control_vs_base": control_vs_base,
    "checkpoints": checkpoints,
    "saturation_hist": saturation_hist,
    "tradeoff": tradeoff,
    "decode_realised": decode_realised,
    "speculative_k": speculative_k,
}


def render_all(study: Study, out_dir: str | Path, stems: Sequence[str] | None = None) -> list[Path]:
    """Render the figures ``stems`` (default: all of :data:`FIGURES`) into ``out_dir``."""
    stems = list(FIGURES) if stems is None else list(stems)
    unknown = [s for s in stems if s not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure stem(s) {unknown}; known: {list(FIGURES)}")
    paths = []
    for stem in stems:
        paths += FIGURES[stem](study, out_dir)
    return paths


def figures_from_files(
    summary_path: str | Path,
    curves_paths: Iterable[str | Path],
    headline_paths: Iterable[str | Path],
    statistics_path: str | Path,
    out_dir: str | Path,
    stems: Sequence[str] | None = None,
    decode_paths: Iterable[str | Path] = (),
) -> list[Path]:
    """File-to-file entry point of the figures rule."""
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
    study = load_study(summary_path, statistics_path, curves_paths, headline_paths, decode_paths)
    return render_all(study, out_dir, stems)


# ---------------------------------------------------------------- logit vs tuned lens

#: Headline numbers drawn logit (x) against tuned (y) in :func:`lens_comparison`.
LENS_HEADLINES: tuple[tuple[str, str], ...] = (
    ("savings_first", "S_first (first agreement)"),
    ("savings_settled", "S_settled (settled prediction)"),
    ("savings_at_99", "savings at 99% consistency"),
)
#: lens -> line style of its layer curves in :func:`lens_comparison`.
LENS_LINES: dict[str, str] = {"logit": "-", "tuned": "--"}


def _headline_with_ci(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """model, workload, a headline metric and its CI columns (NaN where the summary has none:
    a summary written before the metric existed)."""
    out = summary[["model", "workload"]].copy()
    for end in ("", "_ci_low", "_ci_high"):
        column = f"{metric}{end}"
        values = summary[column] if column in summary else np.nan
        out[f"value{end}"] = pd.to_numeric(values, errors="coerce")
    return out


def lens_comparison(
    summaries: Mapping[str, pd.DataFrame], curves: Mapping[str, pd.DataFrame], out_dir: str | Path
) -> list[Path]:
    """Logit vs tuned lens in two figures. ``lens_comparison``: one pair of panels per model
    (agreement with the final top-1 above, KL to final below, across depth), the logit lens
    solid and the tuned lens dashed, one colour per workload. ``lens_headlines``: per
    workload, each headline number under both lenses, one point per model (logit on x,
    tuned on y, each with its bootstrap CI; above the diagonal = the tuned lens lets the
    model exit earlier)."""
    with plt.rc_context(RC_PARAMS):
        return _lens_curves(summaries["logit"], curves, out_dir) + _lens_headlines(
            summaries, out_dir
        )


#: Models per row of :func:`lens_comparison`'s small multiples.
LENS_CURVE_COLUMNS = 4


def _lens_curves(
    summary: pd.DataFrame, curves: Mapping[str, pd.DataFrame], out_dir: str | Path
) -> list[Path]:
    stem = "lens_comparison"
    models = _model_order(summary) or list(pd.unique(summary["model"]))
    workloads = list(pd.unique(summary["workload"]))
    if not models:
        return _single_message_figure(out_dir, stem, "no models in this study")
    palette = plt.get_cmap("tab10")
    colors = {w: palette(i % 10) for i, w in enumerate(workloads)}
    ncols = min(LENS_CURVE_COLUMNS, len(models))
    groups = math.ceil(len(models) / ncols)
    fig, axes = _figure(2 * groups, ncols, 2.6, 2.0)
    for index, model in enumerate(models):
        top, bottom = (
            axes[2 * (index // ncols), index % ncols],
            axes[2 * (index // ncols) + 1, index % ncols],
        )
        for lens, style in LENS_LINES.items():
            table = curves[lens]
            for workload in workloads:
                rows = table[(table["model"] == model) & (table["workload"] == workload)]
                rows = rows.sort_values("layer")
                for ax, column in ((top, "agreement"), (bottom, "kl_to_final_mean")):
                    ax.plot(
                        rows["layer_fraction"],
                        rows[column],
                        linestyle=style,
                        color=colors[workload],
                        linewidth=1.1,
                    )
        top.set(title=model, ylim=(-0.03, 1.03))
        bottom.set_yscale("symlog", linthresh=0.01)
        bottom.set(xlabel="layer / L")
        if index % ncols == 0:
            top.set_ylabel("agreement with final top-1")
            bottom.set_ylabel("KL(p_L ‖ p_l), nats")
    for index in range(len(models), groups * ncols):  # empty cells of the last row
        axes[2 * (index // ncols), index % ncols].set_axis_off()
        axes[2 * (index // ncols) + 1, index % ncols].set_axis_off()
    handles = [Line2D([], [], color=colors[w], label=f"workload {w}") for w in workloads]
    handles += [
        Line2D([], [], color="0.3", linestyle=style, label=f"{lens} lens")
        for lens, style in LENS_LINES.items()
    ]
    _figure_legend(fig, handles)
    return _save(fig, out_dir, stem)


def _lens_headlines(summaries: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    stem = "lens_headlines"
    summary = summaries["logit"]
    models = _model_order(summary) or list(pd.unique(summary["model"]))
    workloads = list(pd.unique(summary["workload"]))
    if not models or not workloads:
        return _single_message_figure(out_dir, stem, "no models in this study")
    colors = model_colors(summary)
    fig, axes = _figure(len(workloads), len(LENS_HEADLINES), 3.3, 2.9)
    for row, workload in enumerate(workloads):
        for ax, (metric, label) in zip(axes[row], LENS_HEADLINES, strict=True):
            both = _headline_with_ci(summary, metric).merge(
                _headline_with_ci(summaries["tuned"], metric),
                on=["model", "workload"],
                suffixes=("_logit", "_tuned"),
            )
            both = both[both["workload"] == workload]
            drawn = []
            for model in models:
                point = both[both["model"] == model]
                if point.empty or point[["value_logit", "value_tuned"]].isna().any(axis=None):
                    continue
                point = point.iloc[0]

                def err(lens: str, point=point) -> np.ndarray | None:
                    low, high = point[f"value_ci_low_{lens}"], point[f"value_ci_high_{lens}"]
                    if pd.isna(low) or pd.isna(high):
                        return None
                    value = point[f"value_{lens}"]
                    return np.array([[max(value - low, 0.0)], [max(high - value, 0.0)]])

                ax.errorbar(
                    point["value_logit"],
                    point["value_tuned"],
                    xerr=err("logit"),
                    yerr=err("tuned"),
                    color=colors.get(model, "0.5"),
                    marker="o",
                    markersize=4,
                    elinewidth=0.7,
                    capsize=0,
                    linestyle="none",
                )
                drawn += [point["value_logit"], point["value_tuned"]]
            if drawn:
                low, high = float(np.nanmin(drawn)), float(np.nanmax(drawn))
                pad = 0.08 * (high - low or 1.0)
                ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=0.8)
            else:
                _message(ax, f"no {label} under both lenses")
            ax.set(xlabel="logit lens", ylabel="tuned lens", title=f"{label} · {workload}")
            ax.xaxis.set_major_locator(MaxNLocator(5))
    handles = [
        Line2D([], [], color=colors[m], marker="o", linestyle="none", label=m)
        for m in models
        if m in colors
    ]
    _figure_legend(fig, handles)
    return _save(fig, out_dir, stem)


def lens_comparison_from_files(
    summary_paths: Mapping[str, str | Path],
    curves_paths: Mapping[str, Iterable[str | Path]],
    out_dir: str | Path,
) -> list[Path]:
    """File-to-file entry point of rule figures_lenses: ``{lens: summary}`` and
    ``{lens: score parquets}`` for lens in (logit, tuned)."""
    summaries = {
        lens: read_table(path, "summary").to_pandas() for lens, path in summary_paths.items()
    }
    curves = {
        lens: pd.concat([read_table(p, "scores").to_pandas() for p in _existing(paths)])
        for lens, paths in curves_paths.items()
    }
    return lens_comparison(summaries, curves, out_dir)


# ---------------------------------------------------------------- the claims under each lens

#: (analysis, panel title) of :func:`lens_trends`, top to bottom. Trends take group ``all``;
#: class differences and checkpoint runs every group; the pair analyses each pair
#: (``<analysis>_pair``) and their mean once a study has two pairs.
LENS_TREND_ANALYSES: tuple[tuple[str, str], ...] = (
    ("release_trend", "Release trend"),
    ("release_trend_controlled", "Release trend, size-controlled"),
    ("params_trend", "Active-params trend"),
    ("total_params_trend", "Total-params trend"),
    ("class_difference", "Class differences"),
    ("checkpoint_trend", "Training-step trend"),
    ("base_vs_tuned", "Tuned − base"),
    ("control_vs_base", "Control − base"),
)
PAIR_ANALYSES = ("base_vs_tuned", "control_vs_base")
#: Short metric names of the claim rows (the statistics table's metric in brackets elsewhere).
CLAIM_METRIC_NAMES: dict[str, str] = {
    "savings_first": "S_first",
    "oracle_savings": "S_settled",
    "savings_at_99": "savings at 99%",
    "consistency_savings_auc": "C-S AUC",
    "net_flop_savings_at_99": "net FLOP at 99%",
}
#: lens -> (colour, marker, hollow) in :func:`lens_trends`.
LENS_STYLES: dict[str, tuple[str, str, bool]] = {
    "logit": ("#222222", "o", False),
    "tuned": ("#D55E00", "s", True),
}
DISAGREE_COLOR = "#A0301E"


def _claim_rows(stats: pd.DataFrame, analysis: str, metrics: Sequence[str]) -> pd.DataFrame:
    """The statistics rows of ``analysis`` that :func:`lens_trends` draws."""
    rows = stats[stats["metric"].isin(metrics)]
    if analysis in PAIR_ANALYSES:
        pairs = rows[rows["analysis"] == f"{analysis}_pair"]
        means = rows[(rows["analysis"] == analysis) & (rows["group"] == "all")]
        return pd.concat([pairs, means[pd.to_numeric(means["n"]) >= 2]])
    rows = rows[rows["analysis"] == analysis]
    if analysis in ("class_difference", "checkpoint_trend"):
        return rows
    return rows[rows["group"] == "all"]


def lens_claims(
    statistics: Mapping[str, pd.DataFrame], analysis: str, metrics: Sequence[str] = FIGURE_METRICS
) -> list[tuple[tuple[str, str, str], dict[str, dict[str, Any] | None]]]:
    """``((metric, workload, group), {lens: statistics row or None})`` of every claim of
    ``analysis`` that some lens reports, in metric, workload and group order."""
    by_lens = {
        lens: _claim_rows(stats, analysis, metrics).set_index(["metric", "workload", "group"])
        for lens, stats in statistics.items()
    }
    workloads = list(
        dict.fromkeys(w for stats in statistics.values() for w in stats["workload"].dropna())
    )
    keys = {key for rows in by_lens.values() for key in rows.index}
    ordered = sorted(
        keys,
        key=lambda k: (metrics.index(k[0]), workloads.index(k[1]), k[2] != "all", k[2]),
    )
    return [
        (
            key,
            {
                lens: rows.loc[[key]].iloc[0].to_dict() if key in rows.index else None
                for lens, rows in by_lens.items()
            },
        )
        for key in ordered
    ]


def _excludes_zero(row: Mapping[str, Any] | None) -> int:
    """+1 / -1 where a row's CI lies above / below zero, 0 where it covers zero or is missing."""
    if row is None or pd.isna(row.get("ci_low")) or pd.isna(row.get("ci_high")):
        return 0
    return 1 if row["ci_low"] > 0 else -1 if row["ci_high"] < 0 else 0


def _claim_note(row: Mapping[str, Any] | None) -> str | None:
    """What a claim row without a CI says instead (``n too small`` where the table does)."""
    if row is None:
        return "not reported"
    if pd.notna(row.get("ci_low")):
        return None
    note = str(row.get("note") or "")
    n = row.get("n")
    if note.startswith(aggregate.TOO_SMALL) or pd.isna(row.get("estimate")):
        return f"{aggregate.TOO_SMALL} (n = {n})"
    return f"no CI (n = {n})"


def lens_trends(statistics: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """The study's claims (``results/statistics.json`` and ``statistics-tuned.json``) under the
    logit and the tuned lens side by side: one panel per analysis, one row per claim (metric,
    workload, group), each lens's estimate with its CI as the table has it; a row label in
    red where one lens's CI excludes zero and the other's does not (or excludes it on the
    other side), a note where a lens has no CI."""
    with plt.rc_context(RC_PARAMS):
        return _lens_trends(statistics, out_dir)


def _lens_trends(statistics: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    stem = "lens_trends"
    lenses = [lens for lens in LENS_STYLES if lens in statistics]
    shown = {lens: statistics[lens] for lens in lenses}
    panels = [
        (title, claims)
        for analysis, title in LENS_TREND_ANALYSES
        if (claims := lens_claims(shown, analysis))
    ]
    if not panels:
        return _single_message_figure(out_dir, stem, "no trend or difference claims\nin this study")
    workloads = list(
        dict.fromkeys(w for stats in shown.values() for w in stats["workload"].dropna())
    )
    # rows: analyses; columns: workloads
    cells = [
        [[(key, rows) for key, rows in claims if key[1] == w] for w in workloads]
        for _, claims in panels
    ]
    heights = [0.8 + 0.2 * max(len(cell) for cell in row) for row in cells]
    fig, axes = plt.subplots(
        len(panels),
        len(workloads),
        figsize=(5.0 * len(workloads), sum(heights)),
        squeeze=False,
        layout="constrained",
        height_ratios=heights,
    )
    for (title, _), row_cells, ax_row in zip(panels, cells, axes, strict=True):
        for workload, cell, ax in zip(workloads, row_cells, ax_row, strict=True):
            ax.set_title(f"{title} · {workload}" if len(workloads) > 1 else title)
            if not cell:
                _message(ax, f"not reported for {workload}")
                continue
            _lens_claims_panel(ax, cell, lenses)
    handles: list[Any] = []
    for lens in lenses:
        color, marker, hollow = LENS_STYLES[lens]
        handles.append(
            Line2D(
                [],
                [],
                color=color,
                marker=marker,
                markerfacecolor="white" if hollow else color,
                label=f"{lens} lens (95% CI as in its statistics table)",
            )
        )
    handles.append(
        matplotlib.patches.Patch(
            facecolor=DISAGREE_COLOR,
            label="red: one lens's CI excludes 0, the other's does not",
        )
    )
    _figure_legend(fig, handles, ncol=1 if len(workloads) == 1 else 2)
    return _save(fig, out_dir, stem)


def _lens_claims_panel(
    ax,
    cell: Sequence[tuple[tuple[str, str, str], Mapping[str, Mapping[str, Any] | None]]],
    lenses: Sequence[str],
) -> None:
    """One analysis on one workload: per claim a row, the lenses' estimates a little apart."""
    labels, disagree, units, noted = [], [], set(), False
    groups = {group for (_, _, group), _ in cell}
    # one group in the whole panel (a single pair or run): named once, under the axis
    shared = groups.pop() if len(groups) == 1 else None
    for y, ((metric, _, group), rows) in enumerate(cell):
        label = CLAIM_METRIC_NAMES.get(metric, metric)
        if group != "all" and shared is None:
            label += f" · {group.replace(' - ', ' − ')}"
        labels.append(label)
        disagree.append(len({_excludes_zero(rows[lens]) for lens in lenses}) > 1)
        notes: dict[str, list[str]] = {}
        drawn = []
        for li, lens in enumerate(lenses):
            row = rows[lens]
            color, marker, hollow = LENS_STYLES[lens]
            if row is not None:
                units.add(row["unit"])
            if row is not None and pd.notna(row["estimate"]):
                offset = (li - (len(lenses) - 1) / 2) * 0.36
                _forest_point(ax, y + offset, row, color, marker, hollow)
                drawn.append(row["ci_high"] if pd.notna(row["ci_high"]) else row["estimate"])
            note = _claim_note(row)
            if note:
                notes.setdefault(note, []).append(lens)
        if notes:
            noted = True
            text = "; ".join(
                note if len(names) == len(lenses) else f"{'/'.join(names)}: {note}"
                for note, names in notes.items()
            )
            ax.annotate(
                text,
                (max(drawn) if drawn else 0.0, y),
                xytext=(5, 0),
                textcoords="offset points",
                va="center",
                fontsize=5.5,
                color="#555555",
            )
    ax.axvline(0, color="#555555", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels)
    for tick, flag in zip(ax.get_yticklabels(), disagree, strict=True):
        if flag:
            tick.set_color(DISAGREE_COLOR)
            tick.set_fontweight("bold")
    ax.set_ylim(len(labels) - 0.5, -0.5)
    unit = " / ".join(sorted(u for u in units if isinstance(u, str)))
    xlabel = "difference (in the metric's unit)" if unit == "metric" else f"slope {unit}"
    if shared not in (None, "all"):
        xlabel = f"{shared.replace(' - ', ' − ')}: {xlabel.split(' (')[0]}"
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.margins(x=0.1)
    if noted:  # room right of the points for the notes
        low, high = ax.get_xlim()
        ax.set_xlim(low, high + 0.35 * (high - low))


def lens_trends_from_files(
    statistics_paths: Mapping[str, str | Path], out_dir: str | Path
) -> list[Path]:
    """File-to-file entry point: ``{lens: results/statistics[-tuned].json}`` -> lens_trends."""
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    statistics = {
        lens: pd.DataFrame(
            json.loads(Path(path).read_text())["rows"], columns=list(aggregate.STATISTICS_COLUMNS)
        )
        for lens, path in statistics_paths.items()
    }
    return lens_trends(statistics, out_dir)
