"""Figures: every figure renders for a full synthetic study and for degenerate ones,
byte-identically across renders; report captions are valid reStructuredText."""

from __future__ import annotations

import filecmp
import json
import re
import struct
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from test_aggregate import FAKE_MODELS, write_fake_study

from exitbench import aggregate, plots, selection
from exitbench.tables import read_table

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "workflow" / "report"
STEMS = list(plots.FIGURES)
#: (width, height) in pixels of the one-panel "nothing to show" figure (4.5 x 2.0 in at 150 dpi).
MESSAGE_SIZE = (675, 300)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def write_fake_decode(
    results: Path, pairs, ks: tuple[int, ...] = (1, 2, 3), gammas: tuple[int, ...] = (2, 4)
) -> dict[tuple[str, str], Path]:
    """A decode JSON per pair (decode stage, schema decode.schema.json) with made-up numbers:
    a self-speculative variant per (k, gamma), FLOP savings -0.6 + 0.1 k - 0.05 gamma."""
    paths = {}
    for i, (model, workload) in enumerate(sorted(pairs)):

        def ci(value):
            return {"estimate": value, "ci_low": value - 0.05, "ci_high": value + 0.05}

        realised = {
            "full": {"method": "full", "tokens_per_s": ci(100.0)},
            "early_exit/recompute": {
                "method": "early_exit",
                **{k: ci(0.1 + 0.02 * i) for k in ("block_savings", "flop_savings")},
                "wall_speedup": ci(0.9), "agreement": ci(1.0),
            },
            "early_exit/propagate": {
                "method": "early_exit",
                **{k: ci(0.2 + 0.02 * i) for k in ("block_savings", "flop_savings")},
                "wall_speedup": ci(1.1), "agreement": ci(0.9),
            },
        }  # fmt: skip
        predicted = {"self_speculative": {}}
        for k in ks:
            for gamma in gammas:
                name = f"self_speculative/k={k}/gamma={gamma}"
                realised[name] = {
                    "method": "self_speculative", "k": k, "gamma": gamma,
                    "flop_savings": ci(-0.6 + 0.1 * k - 0.05 * gamma),
                    "wall_speedup": ci(0.8 + 0.1 * k), "acceptance_rate": ci(0.6),
                    "pass_cost_speedup": ci(0.9 + 0.05 * k - 0.01 * gamma),
                }  # fmt: skip
                predicted["self_speculative"][name] = {
                    "k": k, "gamma": gamma, "alpha": 0.5, "flop_speedup": 1.0 + 0.1 * k,
                    "pass_cost_speedup": 1.0 + 0.1 * k,
                }  # fmt: skip
        path = results / "decode" / model / f"{workload}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"model": model, "workload": workload, "num_layers": 6}
        path.write_text(json.dumps({**data, "realised": realised, "predicted": predicted}))
        paths[(model, workload)] = path
    return paths


#: A positive control of llama-7b (trained for early exit): more savings than its base.
CONTROL = {
    "llama-7b-ee": (
        {**FAKE_MODELS["llama-7b"][0], "control": True, "base_model": "llama-7b"},
        32,
        0.45,
    )
}
STUDY_MODELS = {**FAKE_MODELS, **CONTROL}


def render_study(root: Path, decode: dict | None = None, **study_kwargs) -> tuple[Path, list[Path]]:
    """Write a fake study (default: :data:`STUDY_MODELS`), aggregate it and render every figure
    through the file entry point; ``decode``: keyword arguments of :func:`write_fake_decode`,
    ``False`` for a study that decoded nothing."""
    study = write_fake_study(root, **{"models": STUDY_MODELS, **study_kwargs})
    results = root / "results"
    decode_jsons = (
        {} if decode is False else write_fake_decode(results, study.score_jsons, **(decode or {}))
    )
    aggregate.aggregate_files(
        study.score_jsons,
        study.models,
        study.model_infos,
        results / "summary.parquet",
        results / "summary.csv",
        results / "statistics.csv",
        results / "statistics.json",
        n_boot=200,
        decode_jsons=decode_jsons,
    )
    out = root / "figures"
    paths = plots.figures_from_files(
        results / "summary.parquet",
        study.curves.values(),
        study.score_jsons.values(),
        results / "statistics.json",
        out,
        decode_paths=decode_jsons.values(),
    )
    return out, paths


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, list[Path]]:
    return render_study(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, list[Path]]:
    models = {"gpt2-small": FAKE_MODELS["gpt2-small"]}
    return render_study(
        tmp_path_factory.mktemp("single"),
        decode={"ks": (2,), "gammas": (4,)},  # one k: a point per series
        models=models,
        workloads=("docs",),
        failed=(),
    )


def check_files(out: Path, stem: str) -> None:
    pdf, png = out / f"{stem}.pdf", out / f"{stem}.png"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    width, height = png_size(png)
    assert width > 100 and height > 100 and png.stat().st_size > 5_000


@pytest.mark.parametrize("stem", STEMS)
def test_figure_renders_for_full_study(full, stem):
    out, paths = full
    assert {out / f"{stem}.pdf", out / f"{stem}.png"} <= set(paths)
    check_files(out, stem)
    assert png_size(out / f"{stem}.png") != MESSAGE_SIZE, f"{stem} shows only a message"


@pytest.mark.parametrize("stem", STEMS)
def test_figure_renders_for_single_model_study(single, stem):
    out, _ = single
    check_files(out, stem)
    # nothing to pair or to follow over training: a message instead of a failure
    shows_message = png_size(out / f"{stem}.png") == MESSAGE_SIZE
    assert shows_message == (stem in {"base_vs_tuned", "checkpoints", "control_vs_base"})


def test_figures_render_without_metadata(tmp_path):
    """No dates, classes, sizes or FLOP models: every figure still renders."""
    bare = {
        name: ({}, layers, savings) for name, (_, layers, savings) in list(FAKE_MODELS.items())[:3]
    }
    study = write_fake_study(tmp_path, models=bare, workloads=("docs",), failed=())
    summary = aggregate.build_summary(study.score_jsons, study.models)
    summary["net_flop_savings_at_99"] = float("nan")
    headlines = {key: json.loads(path.read_text()) for key, path in study.score_jsons.items()}
    curves = pd.concat([read_table(p, "scores").to_pandas() for p in study.curves.values()])
    statistics = aggregate.claim_statistics(summary, n_boot=50)
    data = plots.Study(summary, curves, statistics, headlines)
    for stem in STEMS:
        paths = plots.FIGURES[stem](data, tmp_path / "figures")
        assert [p.name for p in paths] == [f"{stem}.pdf", f"{stem}.png"]
        check_files(tmp_path / "figures", stem)


def test_figures_are_byte_identical_across_renders(tmp_path):
    """Two renders of every figure (a smaller study with a pair and a run) are byte-identical."""
    names = [
        "gpt2-small",
        "llama-7b",
        "llama-7b-chat",
        "mixtral",
        "mamba",
        "pythia-step0",
        "pythia-step143000",
        "llama-7b-ee",
    ]
    models = {name: STUDY_MODELS[name] for name in names}
    out, first = render_study(tmp_path / "a", models=models, workloads=("docs",), failed=())
    root = out.parent
    again = plots.figures_from_files(
        root / "results" / "summary.parquet",
        sorted((root / "results" / "scores").rglob("*.parquet")),
        sorted((root / "results" / "scores").rglob("*.json")),
        root / "results" / "statistics.json",
        tmp_path / "b",
        decode_paths=sorted((root / "results" / "decode").rglob("*.json")),
    )
    assert [p.name for p in again] == [p.name for p in first]
    assert len(again) == 2 * len(STEMS)
    for path in again:
        assert filecmp.cmp(path, out / path.name, shallow=False), f"{path.name} differs"


def test_model_colors_follow_the_class_palette():
    summary = aggregate._typed(
        pd.DataFrame(
            [
                {"model": "a", "workload": "w", "status": "ok", "arch": "dense"},
                {"model": "b", "workload": "w", "status": "ok", "arch": "dense"},
                {"model": "c", "workload": "w", "status": "ok", "arch": "moe"},
                {"model": "d", "workload": "w", "status": "ok"},
            ]
        )
    )
    colors = plots.model_colors(summary)
    assert colors["a"] != colors["b"]
    assert colors["c"] == pytest.approx(to_rgb(plots.ARCH_COLORS["moe"]))
    assert colors["d"] == pytest.approx(to_rgb(plots.UNKNOWN_COLOR))


def test_unknown_stem_names_the_known_ones(full):
    out, _ = full
    with pytest.raises(ValueError, match="agreement_curves"):
        plots.render_all(None, out, ["nope"])


# ---------------------------------------------------------------- report


def test_every_figure_has_a_caption_and_a_report_entry():
    rules = (REPO / "workflow" / "rules" / "figures.smk").read_text()
    for stem in STEMS:
        assert (REPORT / f"{stem}.rst").exists(), stem
        assert re.search(
            rf'{stem}=report\(\s*"figures/{stem}\.png",\s*caption="\.\./report/{stem}\.rst"',
            rules,
        ), f"figures.smk: no report() output for {stem}"


@pytest.mark.parametrize("name", sorted(p.name for p in REPORT.glob("*.rst")))
def test_captions_render_as_restructuredtext(name):
    """Each caption is a Jinja template (as Snakemake renders it) giving warning-free RST."""
    import jinja2
    from docutils.core import publish_parts

    class Snakemake:
        config = {
            "models": {"a": {}, "b": {}},
            "workloads": {"docs": {}, "code": {}},
            "tokenize": {"seq_len": 256},
        }

    text = jinja2.Template((REPORT / name).read_text(), undefined=jinja2.StrictUndefined)
    rst = text.render(snakemake=Snakemake)
    html = publish_parts(
        rst, writer="html", settings_overrides={"halt_level": 2, "report_level": 2}
    )["body"]
    assert len(html) > 200
    assert "{{" not in rst


# ---------------------------------------------------------------- drawn values


def render_keeping_figures(render, *args, **kwargs) -> dict:
    """Run ``render(*args, **kwargs)`` and return ``{stem: matplotlib figure}`` it saved."""
    figures = {}
    save = plots._save

    def keep(fig, out_dir, stem):
        figures[stem] = fig
        return save(fig, out_dir, stem)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "_save", keep)
        render(*args, **kwargs)
    return figures


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A one-workload study rendered through the file entry point, its figures kept."""
    root = tmp_path_factory.mktemp("drawn")
    figures = render_keeping_figures(render_study, root, workloads=("docs",), failed=())
    results = root / "results"
    statistics = pd.DataFrame(json.loads((results / "statistics.json").read_text())["rows"])
    summary = read_table(results / "summary.parquet", "summary").to_pandas()
    return root, statistics, summary, figures


def panel(fig, title: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def stat_row(statistics: pd.DataFrame, analysis: str, metric: str, group: str) -> pd.Series:
    hit = statistics[
        (statistics["analysis"] == analysis)
        & (statistics["metric"] == metric)
        & (statistics["group"] == group)
    ]
    assert len(hit) == 1
    return hit.iloc[0]


def errorbar_ranges(ax) -> list[tuple[float, float, float, float]]:
    """(x, y, low, high) of every error bar in ``ax`` (vertical bars)."""
    out = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer) and container.lines[2]:
            (x,), (y,) = container.lines[0].get_xdata(), container.lines[0].get_ydata()
            (segment,) = container.lines[2][0].get_segments()
            out.append((x, y, float(segment[:, 1].min()), float(segment[:, 1].max())))
    return out


def test_release_trend_draws_the_statistics_table(drawn):
    _, statistics, summary, figures = drawn
    ax = panel(figures["release_trend"], plots.METRIC_TITLES["oracle_savings"])
    stat = stat_row(statistics, "release_trend", "oracle_savings", "all")
    (trend,) = [line for line in ax.lines if len(line.get_xdata()) > 1]
    x, y = np.asarray(trend.get_xdata()), np.asarray(trend.get_ydata())
    np.testing.assert_allclose(y, stat["intercept"] + stat["estimate"] * x, rtol=1e-12)
    # one point per independent model with a release date, at its summary value and CI
    models = selection.independent_models(summary)
    models = models[models["release_year"].notna()]
    expected = sorted(
        zip(
            models["release_year"],
            models["oracle_savings"],
            models["oracle_savings_ci_low"],
            models["oracle_savings_ci_high"],
            strict=True,
        )
    )
    assert stat["models"] == ";".join(models["model"])
    np.testing.assert_allclose(sorted(errorbar_ranges(ax)), expected, rtol=1e-12)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert f"slope {plots._fmt(stat['estimate'], 2)}/yr" in texts and f"n = {stat['n']}" in texts


def test_arch_comparison_bars_are_the_class_means_of_the_table(drawn):
    _, statistics, _, figures = drawn
    ax = panel(figures["arch_comparison"], plots.METRIC_TITLES["savings_at_99"])
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() != 0]
    heights = [bar.get_height() for bar in sorted(bars, key=lambda b: b.get_x())]
    means = statistics[
        (statistics["analysis"] == "class_mean") & (statistics["metric"] == "savings_at_99")
    ].set_index("group")
    classes = [c for c in plots.ARCH_COLORS if c in means.index]
    assert heights == pytest.approx(means.loc[classes, "estimate"].tolist())
    # the black CI bars are the table's bootstrap CIs (classes with >= 2 models)
    with_ci = means[means["ci_low"].notna()]
    ranges = {round(y, 12): (low, high) for _, y, low, high in errorbar_ranges(ax)}
    for _, row in with_ci.iterrows():
        assert ranges[round(row["estimate"], 12)] == pytest.approx((row["ci_low"], row["ci_high"]))


def test_figures_follow_the_statistics_file_not_a_recomputation(drawn, tmp_path):
    """Edit a class mean in results/statistics.json: the figure shows the edited value."""
    root, _, _, _ = drawn
    results = root / "results"
    data = json.loads((results / "statistics.json").read_text())
    for row in data["rows"]:
        if (row["analysis"], row["metric"], row["group"]) == (
            "class_mean",
            "oracle_savings",
            "moe",
        ):
            row["estimate"] = 0.777
    edited = tmp_path / "statistics.json"
    edited.write_text(json.dumps(data))
    figures = render_keeping_figures(
        plots.figures_from_files,
        results / "summary.parquet",
        sorted((results / "scores").rglob("*.parquet")),
        sorted((results / "scores").rglob("*.json")),
        edited,
        tmp_path / "figures",
        stems=["arch_comparison"],
    )
    ax = panel(figures["arch_comparison"], plots.METRIC_TITLES["oracle_savings"])
    heights = [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]
    assert 0.777 in heights


def test_agreement_curves_draw_the_scores_table(drawn):
    root, _, _, figures = drawn
    curve = read_table(root / "results" / "scores" / "llama-7b" / "docs.parquet", "scores")
    curve = curve.to_pandas().sort_values("layer")
    (line,) = [
        line
        for ax in figures["agreement_curves"].axes
        for line in ax.lines
        if line.get_label() == "llama-7b"
    ]
    np.testing.assert_array_equal(line.get_xdata(), curve["layer_fraction"])
    np.testing.assert_array_equal(line.get_ydata(), curve["agreement"])
    labels = {line.get_label() for ax in figures["agreement_curves"].axes for line in ax.lines}
    assert "pythia-step1000" not in labels  # intermediate checkpoints are left out


def test_base_vs_tuned_points_are_the_paired_differences_of_the_table(drawn):
    _, statistics, _, figures = drawn
    ax = panel(figures["base_vs_tuned"], plots.METRIC_TITLES["oracle_savings"])
    pair = stat_row(statistics, "base_vs_tuned_pair", "oracle_savings", "llama-7b-chat - llama-7b")
    xs = [line.get_xdata()[0] for line in ax.lines if len(line.get_xdata()) == 1]
    assert pair["estimate"] == pytest.approx(0.26 - 0.30)
    assert xs[0] == pair["estimate"]


# ---------------------------------------------------------------- issue 9 items 6 and 9


def test_checkpoint_figure_ticks_legend_and_ci_bands(drawn):
    """Log-x labels on decades only (no minor labels to collide), the checkpoint legend
    beside the agreement panel (never over a curve), and a CI band per checkpoint curve
    drawn from the scores table's agreement_ci_low / agreement_ci_high."""
    root, _, _, figures = drawn
    fig = figures["checkpoints"]
    fig.canvas.draw()
    savings = panel(fig, "pythia-160m: savings vs training")
    assert all(not label.get_text() for label in savings.xaxis.get_minorticklabels())
    agreement = panel(fig, "pythia-160m: agreement")
    legend = agreement.get_legend()
    assert legend.get_window_extent().x0 >= agreement.get_window_extent().x1
    bands = agreement.collections
    assert len(bands) == 4  # steps 0, 1000, 10000, 143000
    curve = read_table(root / "results" / "scores" / "pythia-step1000" / "docs.parquet", "scores")
    curve = curve.to_pandas().sort_values("layer")
    (path,) = bands[1].get_paths()
    vertices = path.vertices
    n = len(curve)
    # fill_between: lower edge left to right, then upper edge right to left
    np.testing.assert_array_equal(vertices[1 : n + 1, 1], curve["agreement_ci_low"])
    np.testing.assert_array_equal(vertices[n + 2 : 2 * n + 2, 1], curve["agreement_ci_high"][::-1])


def test_arch_comparison_says_n_too_small_where_the_table_does(drawn):
    _, statistics, _, figures = drawn
    ax = panel(figures["arch_comparison"], plots.METRIC_TITLES["oracle_savings"])
    means = statistics[
        (statistics["analysis"] == "class_mean") & (statistics["metric"] == "oracle_savings")
    ]
    small = means[means["note"].fillna("").str.startswith("n too small")]
    assert set(small["group"]) == {"moe", "ssm", "hybrid"}  # one model each; dense has 5
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n too small (n = 1)") == len(small)


def test_params_trend_puts_models_at_their_active_parameters(drawn):
    _, statistics, summary, figures = drawn
    ax = panel(figures["params_trend"], plots.METRIC_TITLES["oracle_savings"])
    assert ax.get_xlabel() == "active parameters (count, log scale)"
    mixtral = summary[summary["model"] == "mixtral"].iloc[0]
    points = {round(y, 12): x for x, y, _, _ in errorbar_ranges(ax)}
    assert points[round(mixtral["oracle_savings"], 12)] == pytest.approx(12.9e9)
    stat = stat_row(statistics, "params_trend", "oracle_savings", "all")
    assert stat["x"] == "log10(active_params)"
    (trend,) = [line for line in ax.lines if len(line.get_xdata()) > 1]
    x, y = np.log10(trend.get_xdata()), np.asarray(trend.get_ydata())
    np.testing.assert_allclose(y, stat["intercept"] + stat["estimate"] * x, rtol=1e-12)


def _in_memory_study(root: Path, names: list[str], **entry_overrides) -> plots.Study:
    models = {
        name: ({**FAKE_MODELS[name][0], **entry_overrides}, *FAKE_MODELS[name][1:])
        for name in names
    }
    study = write_fake_study(root, models=models, workloads=("docs",), failed=())
    summary = aggregate.build_summary(study.score_jsons, study.models)
    headlines = {key: json.loads(path.read_text()) for key, path in study.score_jsons.items()}
    curves = pd.concat([read_table(p, "scores").to_pandas() for p in study.curves.values()])
    statistics = aggregate.claim_statistics(summary, n_boot=50)
    return plots.Study(summary, curves, statistics, headlines)


def test_release_trend_of_zoo_models_says_dates_are_assigned_and_n_too_small(tmp_path):
    names = ["gpt2-small", "llama-7b", "mixtral", "mamba"]
    study = _in_memory_study(tmp_path, names, path="results/zoo/run/final")
    figures = render_keeping_figures(plots.release_trend, study, tmp_path / "figures")
    fig = figures["release_trend"]
    assert fig.get_suptitle() == (
        "Release dates are assigned labels (zoo models trained here), not history"
    )
    ax = panel(fig, plots.METRIC_TITLES["oracle_savings"])
    stat = study.statistics.set_index(["analysis", "metric", "group"]).loc[
        ("release_trend", "oracle_savings", "all")
    ]
    assert stat["n"] == 4 and pd.isna(stat["ci_low"])
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "(n too small for a CI)" in texts and "n = 4" in texts
    # hub models (no results/zoo path): no such note
    hub = _in_memory_study(tmp_path / "hub", names)
    figures = render_keeping_figures(plots.release_trend, hub, tmp_path / "hub-figures")
    assert figures["release_trend"].get_suptitle() == ""


# ---------------------------------------------------------------- issues 11, 12, 14: new figures


def series(ax) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list | None]]:
    """(line style, marker) -> (x, y, [(low, high)] or None) of each error-bar series in ``ax``."""
    out = {}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            line = container.lines[0]
            bars = None
            if container.lines[2]:
                segments = container.lines[2][0].get_segments()
                bars = [(float(s[:, 1].min()), float(s[:, 1].max())) for s in segments]
            key = (line.get_linestyle(), line.get_marker())
            out[key] = (
                np.asarray(line.get_xdata(), float),
                np.asarray(line.get_ydata(), float),
                bars,
            )
    return out


def test_speculative_k_draws_each_variant_beside_its_prediction(drawn):
    """Per gamma (marker), x = k; realised pass-cost speed-up with its CI (solid) beside the
    decode JSON's predicted one (dashed, no CI), realised FLOP speed-up 1 / (1 - flop_savings)
    with the same map of its CI (dash-dot), wall-clock speed-up with its CI (dotted); a line
    at 1."""
    root, _, _, figures = drawn
    fig = figures["speculative_k"]
    data = json.loads((root / "results" / "decode" / "llama-7b" / "docs.json").read_text())
    ax = panel(fig, "llama-7b")
    drawn_series = series(ax)
    assert set(drawn_series) == {
        (style, marker) for style in ("-", "--", "-.", ":") for marker in ("o", "s")
    }
    for gamma, marker in ((2, "o"), (4, "s")):
        names = [f"self_speculative/k={k}/gamma={gamma}" for k in (1, 2, 3)]
        savings = [data["realised"][n]["flop_savings"] for n in names]
        x, y, bars = drawn_series[("-", marker)]
        np.testing.assert_allclose(x, [1 - 0.15, 2 - 0.15, 3 - 0.15])
        passes = [data["realised"][n]["pass_cost_speedup"] for n in names]
        np.testing.assert_allclose(y, [c["estimate"] for c in passes])
        np.testing.assert_allclose(bars, [(c["ci_low"], c["ci_high"]) for c in passes])
        x, y, bars = drawn_series[("-.", marker)]
        np.testing.assert_allclose(x, [1 + 0.05, 2 + 0.05, 3 + 0.05])
        np.testing.assert_allclose(y, [1 / (1 - s["estimate"]) for s in savings], rtol=1e-12)
        expected = [(1 / (1 - s["ci_low"]), 1 / (1 - s["ci_high"])) for s in savings]
        np.testing.assert_allclose(bars, expected, rtol=1e-12)
        _, y, bars = drawn_series[(":", marker)]
        wall = [data["realised"][n]["wall_speedup"] for n in names]
        np.testing.assert_allclose(y, [w["estimate"] for w in wall])
        np.testing.assert_allclose(bars, [(w["ci_low"], w["ci_high"]) for w in wall])
        _, y, bars = drawn_series[("--", marker)]
        predicted = data["predicted"]["self_speculative"]
        np.testing.assert_allclose(y, [predicted[n]["pass_cost_speedup"] for n in names])
        assert bars is None
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.lines)
    assert ax.get_xlim() == (0.5, 5.5)  # k runs over 1..L-1, L = 6


def test_speculative_points_handle_one_k_and_missing_cis():
    data = {
        "realised": {
            "full": {"method": "full"},
            "self_speculative/k=3/gamma=2": {
                "method": "self_speculative",
                "k": 3,
                "gamma": 2,
                "flop_savings": {"estimate": 0.5, "ci_low": None, "ci_high": None},
                "wall_speedup": {"estimate": 1.5},
            },
        },
        "predicted": {"self_speculative": {}},
    }
    (row,) = plots.speculative_points(data).to_dict("records")
    assert (row["k"], row["gamma"]) == (3, 2)
    assert row["flop_speedup"] == 2.0 and np.isnan(row["flop_speedup_ci_low"])
    assert row["wall_speedup"] == 1.5 and np.isnan(row["wall_speedup_ci_high"])
    assert np.isnan(row["predicted_pass_cost_speedup"]) and np.isnan(row["pass_cost_speedup"])
    study = plots.Study(
        aggregate._typed(
            pd.DataFrame({"model": ["m"], "workload": ["w"], "status": ["ok"], "arch": ["dense"]})
        ),
        pd.DataFrame(),
        pd.DataFrame(),
        decode={("m", "w"): data},
    )
    with TemporaryDirectory() as out:
        figures = render_keeping_figures(plots.speculative_k, study, out)
    ax = panel(figures["speculative_k"], "m")
    drawn_series = series(ax)
    assert drawn_series[("-.", "o")][1].tolist() == [2.0] and drawn_series[("-.", "o")][2] is None
    assert ("-", "o") not in drawn_series  # an older JSON without pass_cost_speedup
    assert ("--", "o") not in drawn_series  # no prediction: nothing drawn, no failure


def test_control_vs_base_draws_the_pair_rows_and_the_models_values(drawn):
    _, statistics, summary, figures = drawn
    fig = figures["control_vs_base"]
    for index, metric in enumerate(plots.CONTROL_METRICS):
        values, difference = fig.axes[2 * index], fig.axes[2 * index + 1]
        assert values.get_title() == plots.METRIC_TITLES[metric]
        assert difference.get_title() == "control − base (paired)"
        pair = stat_row(statistics, "control_vs_base_pair", metric, "llama-7b-ee - llama-7b")
        if pd.isna(pair["estimate"]):  # the fake score JSONs have no S_first: a message
            assert [t.get_text() for t in difference.texts] == [
                f"no values of {metric} for the pairs"
            ]
            continue
        x = [line.get_xdata()[0] for line in difference.lines if len(line.get_xdata()) == 1]
        assert x[0] == pair["estimate"]
        labels = [t.get_text() for t in difference.get_yticklabels()]
        assert labels == ["llama-7b-ee − llama-7b", "mean of 1 pair(s)"]
        assert "no CI (n = 1)" in [t.get_text() for t in difference.texts]
        # one row per model: its summary value and bootstrap CI
        rows = summary.set_index("model")
        labels = [t.get_text() for t in values.get_yticklabels()]
        assert labels == ["llama-7b-ee", "llama-7b"]
        for y, (model, container) in enumerate(zip(labels, values.containers, strict=True)):
            line = container.lines[0]
            assert (line.get_xdata()[0], line.get_ydata()[0]) == (rows.loc[model, metric], y)
            (segment,) = container.lines[2][0].get_segments()
            low, high = rows.loc[model, f"{metric}_ci_low"], rows.loc[model, f"{metric}_ci_high"]
            assert tuple(segment[:, 0]) == pytest.approx((low, high))
    oracle = stat_row(
        statistics, "control_vs_base_pair", "oracle_savings", "llama-7b-ee - llama-7b"
    )
    assert oracle["estimate"] == pytest.approx(0.45 - 0.30)


def test_figures_without_decode_or_control_say_so(tmp_path):
    models = {name: FAKE_MODELS[name] for name in ("gpt2-small", "llama-7b", "mixtral")}
    out, _ = render_study(tmp_path, decode=False, models=models, workloads=("docs",), failed=())
    for stem in ("speculative_k", "control_vs_base", "decode_realised"):
        check_files(out, stem)
        assert png_size(out / f"{stem}.png") == MESSAGE_SIZE, stem


def lens_statistics(root: Path) -> dict[str, pd.DataFrame]:
    """The drawn study's statistics as the logit lens's, and a tuned lens's copy whose release
    trend of S_settled lies above zero (the logit one does not) and has no class differences."""
    rows = json.loads((root / "results" / "statistics.json").read_text())["rows"]
    logit = pd.DataFrame(rows, columns=list(aggregate.STATISTICS_COLUMNS))
    tuned = logit[logit["analysis"] != "class_difference"].copy()
    trend = (tuned["analysis"] == "release_trend") & (tuned["metric"] == "oracle_savings")
    trend &= tuned["group"] == "all"
    tuned.loc[trend, ["estimate", "ci_low", "ci_high"]] = [0.02, 0.01, 0.03]
    return {"logit": logit, "tuned": tuned}


def test_lens_trends_draws_both_tables_and_marks_where_they_disagree(drawn, tmp_path):
    root, _, _, _ = drawn
    statistics = lens_statistics(root)
    logit_trend = stat_row(statistics["logit"], "release_trend", "oracle_savings", "all")
    assert logit_trend["ci_low"] < 0  # tuned copy: all above zero, so the two disagree
    figures = render_keeping_figures(plots.lens_trends, statistics, tmp_path / "a")
    fig = figures["lens_trends"]
    ax = panel(fig, "Release trend")
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == ["S_settled", "savings at 99%", "C-S AUC",
                                              "net FLOP at 99%"]  # fmt: skip
    # S_settled: logit (black, filled) above tuned (orange, open), each at its table value
    drawn_series = [
        (c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0], c.lines[0].get_markerfacecolor())
        for c in ax.containers
    ]
    assert drawn_series[0] == (logit_trend["estimate"], -0.18, "#222222")
    assert drawn_series[1] == (0.02, 0.18, "white")
    assert labels[0].get_color() == plots.DISAGREE_COLOR
    assert all(t.get_color() != plots.DISAGREE_COLOR for t in labels[1:])
    # class differences: tuned reports none, and n is too small for a CI under the logit lens
    classes = panel(fig, "Class differences")
    notes = [t.get_text() for t in classes.texts]
    assert notes and all(n.startswith("logit: n too small") for n in notes)
    assert all("tuned: not reported" in n for n in notes)
    # the pair analyses: one pair, named once under the axis
    pairs = panel(fig, "Control − base")
    assert pairs.get_xlabel() == "llama-7b-ee − llama-7b: difference"
    # byte-identical re-render
    again = plots.lens_trends(statistics, tmp_path / "b")
    for path in again:
        assert filecmp.cmp(path, tmp_path / "a" / path.name, shallow=False), path.name


def test_lens_trends_without_claims_says_so(tmp_path):
    empty = pd.DataFrame(columns=list(aggregate.STATISTICS_COLUMNS))
    plots.lens_trends({"logit": empty, "tuned": empty}, tmp_path)
    assert png_size(tmp_path / "lens_trends.png") == MESSAGE_SIZE


def test_figures_lenses_rule_reports_lens_trends():
    rules = (REPO / "workflow" / "rules" / "figures.smk").read_text()
    assert re.search(
        r'lens_trends=report\(\s*"figures/lens_trends\.png",\s*caption="\.\./report/lens_trends\.rst"',
        rules,
    )
    assert (REPORT / "lens_trends.rst").exists()


def _lens_inputs(shift: float) -> tuple[dict, dict]:
    """Two models on two workloads under both lenses; the tuned lens's numbers are the logit
    lens's plus ``shift`` (its CI too). The logit summary of model b lacks savings_first."""
    rows = []
    for model, arch, value in (("a", "dense", 0.3), ("b", "ssm", 0.5)):
        for workload in ("docs", "code"):
            row = {"model": model, "workload": workload, "status": "ok", "arch": arch}
            for metric in ("savings_first", "savings_settled", "savings_at_99"):
                row[metric] = value
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = value - 0.05, value + 0.1
            rows.append(row)
    logit = aggregate._typed(pd.DataFrame(rows))
    logit.loc[logit["model"] == "b", "savings_first"] = np.nan
    tuned = logit.copy()
    for metric in ("savings_first", "savings_settled", "savings_at_99"):
        for end in ("", "_ci_low", "_ci_high"):
            tuned[f"{metric}{end}"] += shift
    tuned.loc[tuned["model"] == "b", "savings_first"] = 0.9
    layers = np.arange(5)
    curves = pd.DataFrame(
        [
            {"model": m, "workload": w, "layer": int(layer), "layer_fraction": layer / 4,
             "agreement": layer / 4, "kl_to_final_mean": 1.0 - layer / 4}
            for m in ("a", "b") for w in ("docs", "code") for layer in layers
        ]
    )  # fmt: skip
    return {"logit": logit, "tuned": tuned}, {"logit": curves, "tuned": curves}


def test_lens_comparison_pairs_each_model_with_both_cis_per_workload(tmp_path):
    summaries, curves = _lens_inputs(0.2)
    figures = render_keeping_figures(plots.lens_comparison, summaries, curves, tmp_path / "a")
    fig = figures["lens_headlines"]
    for workload in ("docs", "code"):
        ax = panel(fig, f"savings at 99% consistency · {workload}")
        points = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(points) == 2  # one per model
        line = points[0].lines[0]  # model a: logit 0.3 on x, tuned 0.5 on y
        assert (line.get_xdata()[0], line.get_ydata()[0]) == pytest.approx((0.3, 0.5))
        xbar, ybar = (c.get_segments()[0] for c in points[0].lines[2])
        assert sorted(xbar[:, 0]) == pytest.approx([0.25, 0.4])  # the logit CI
        assert sorted(ybar[:, 1]) == pytest.approx([0.45, 0.6])  # the tuned CI
        # model b has no logit S_first: only model a is drawn there
        first = panel(fig, f"S_first (first agreement) · {workload}")
        assert len([c for c in first.containers if isinstance(c, ErrorbarContainer)]) == 1
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["a", "b"]
    # the curves: one pair of panels per model, a line per lens and workload
    curves_fig = figures["lens_comparison"]
    top = panel(curves_fig, "b")
    styles = sorted(line.get_linestyle() for line in top.lines)
    assert styles == ["-", "-", "--", "--"]
    labels = [t.get_text() for legend in curves_fig.legends for t in legend.get_texts()]
    assert labels == ["workload docs", "workload code", "logit lens", "tuned lens"]
    again = render_keeping_figures(plots.lens_comparison, summaries, curves, tmp_path / "b")
    assert set(again) == {"lens_comparison", "lens_headlines"}
    for name in ("lens_comparison", "lens_headlines"):
        for ext in ("png", "pdf"):
            file = f"{name}.{ext}"
            assert filecmp.cmp(tmp_path / "a" / file, tmp_path / "b" / file, shallow=False)


def test_decode_realised_draws_the_summary_columns_side_by_side(drawn):
    """Each bar is the summary's value: potential (both oracles, the 99% policy) beside realised
    savings, and the self-speculative pass-cost speed-up beside its prediction."""
    _, _, summary, figures = drawn
    savings_ax, speedups_ax = figures["decode_realised"].axes[:2]
    rows = summary[summary["decode_full_tokens_per_s"].notna()]
    order = [m for m in plots._model_order(rows) if m in set(rows["model"])]
    rows = rows.set_index("model").loc[order]
    for ax, columns in ((savings_ax, plots.DECODE_SAVINGS), (speedups_ax, plots.DECODE_SPEEDUPS)):
        bars = {c.get_label(): [r.get_height() for r in c.patches] for c in ax.containers}
        assert list(bars) == [label for _, label in columns]
        for column, label in columns:
            np.testing.assert_allclose(bars[label], rows[column].to_numpy(dtype=float))
    assert rows["decode_speculative_pass_cost_speedup"].notna().all()
    assert "self-speculative (pass cost, predicted)" in [
        c.get_label() for c in speedups_ax.containers
    ]


def test_figure_legends_stay_on_the_canvas(drawn):
    """A figure legend with long labels wraps into rows instead of running off the figure
    (the checkpoint figure's legend was cut off on both sides)."""
    _, _, _, figures = drawn
    checked = 0
    for stem, fig in figures.items():
        agg = FigureCanvasAgg(fig)  # a saved, closed figure keeps only a bare canvas
        agg.draw()
        renderer, canvas = agg.get_renderer(), fig.bbox
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            assert box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1, stem
            checked += 1
    assert checked >= 5
