"""Figures: every figure renders for a full synthetic study and for degenerate ones,
byte-identically across renders; report captions are valid reStructuredText."""

from __future__ import annotations

import filecmp
import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
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


def write_fake_decode(results: Path, pairs) -> dict[tuple[str, str], Path]:
    """A decode JSON per pair (decode stage, schema decode.schema.json) with made-up numbers."""
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
            "self_speculative/k=2/gamma=4": {
                "method": "self_speculative", "flop_savings": ci(0.3),
                "wall_speedup": ci(1.2), "acceptance_rate": ci(0.6),
            },
        }  # fmt: skip
        predicted = {"self_speculative": {"self_speculative/k=2/gamma=4": {"flop_speedup": 1.5}}}
        path = results / "decode" / model / f"{workload}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"realised": realised, "predicted": predicted}))
        paths[(model, workload)] = path
    return paths


def render_study(root: Path, **study_kwargs) -> tuple[Path, list[Path]]:
    """Write a fake study, aggregate it and render every figure through the file entry point."""
    study = write_fake_study(root, **study_kwargs)
    results = root / "results"
    aggregate.aggregate_files(
        study.score_jsons,
        study.models,
        study.model_infos,
        results / "summary.parquet",
        results / "summary.csv",
        results / "statistics.csv",
        results / "statistics.json",
        n_boot=200,
        decode_jsons=write_fake_decode(results, study.score_jsons),
    )
    out = root / "figures"
    paths = plots.figures_from_files(
        results / "summary.parquet",
        study.curves.values(),
        study.score_jsons.values(),
        results / "statistics.json",
        out,
    )
    return out, paths


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, list[Path]]:
    return render_study(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, list[Path]]:
    models = {"gpt2-small": FAKE_MODELS["gpt2-small"]}
    return render_study(
        tmp_path_factory.mktemp("single"), models=models, workloads=("docs",), failed=()
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
    assert shows_message == (stem in {"base_vs_tuned", "checkpoints"})


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
    ]
    models = {name: FAKE_MODELS[name] for name in names}
    out, first = render_study(tmp_path / "a", models=models, workloads=("docs",), failed=())
    root = out.parent
    again = plots.figures_from_files(
        root / "results" / "summary.parquet",
        sorted((root / "results" / "scores").rglob("*.parquet")),
        sorted((root / "results" / "scores").rglob("*.json")),
        root / "results" / "statistics.json",
        tmp_path / "b",
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
