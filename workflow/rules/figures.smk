# Stage 6: figures of the study (PDF for papers, PNG for the HTML report).


localrules:
    figures,


rule figures:
    input:
        summary="results/summary.parquet",
        statistics="results/statistics.json",
        curves=[f"results/scores/{m}/{w}.parquet" for m, w in PAIRS],
        headlines=[f"results/scores/{m}/{w}.json" for m, w in PAIRS],
        # realised decoding: speculative_k draws each variant (the summary keeps only the best)
        decode=[f"results/decode/{m}/{w}.json" for m, w in decode_pairs()],
    output:
        pdfs=expand("figures/{figure}.pdf", figure=FIGURES),
        agreement_curves=report(
            "figures/agreement_curves.png",
            caption="../report/agreement_curves.rst",
            category="1. Layer curves",
        ),
        saturation_hist=report(
            "figures/saturation_hist.png",
            caption="../report/saturation_hist.rst",
            category="1. Layer curves",
        ),
        tradeoff=report(
            "figures/tradeoff.png",
            caption="../report/tradeoff.rst",
            category="2. Exit policies",
        ),
        release_trend=report(
            "figures/release_trend.png",
            caption="../report/release_trend.rst",
            category="3. Trends",
        ),
        params_trend=report(
            "figures/params_trend.png",
            caption="../report/params_trend.rst",
            category="3. Trends",
        ),
        arch_comparison=report(
            "figures/arch_comparison.png",
            caption="../report/arch_comparison.rst",
            category="4. Comparisons",
        ),
        base_vs_tuned=report(
            "figures/base_vs_tuned.png",
            caption="../report/base_vs_tuned.rst",
            category="4. Comparisons",
        ),
        control_vs_base=report(
            "figures/control_vs_base.png",
            caption="../report/control_vs_base.rst",
            category="4. Comparisons",
        ),
        checkpoints=report(
            "figures/checkpoints.png",
            caption="../report/checkpoints.rst",
            category="5. Training checkpoints",
        ),
        decode_realised=report(
            "figures/decode_realised.png",
            caption="../report/decode_realised.rst",
            category="6. Realised decoding",
        ),
        speculative_k=report(
            "figures/speculative_k.png",
            caption="../report/speculative_k.rst",
            category="6. Realised decoding",
        ),
    log:
        "results/logs/figures/figures.log",
    benchmark:
        "results/benchmarks/figures/figures.tsv"
    conda:
        "../../envs/exitbench.yaml"
    params:
        figures=FIGURES,
    script:
        "../scripts/figures.py"


# lenses: [logit, tuned]: the two lenses side by side (README, Tuned lens)
rule figures_lenses:
    input:
        summary="results/summary.parquet",
        summary_tuned="results/summary-tuned.parquet",
        curves=[f"results/scores/{m}/{w}.parquet" for m, w in PAIRS],
        curves_tuned=[f"results/scores-tuned/{m}/{w}.parquet" for m, w in PAIRS],
        statistics="results/statistics.json",
        statistics_tuned="results/statistics-tuned.json",
    output:
        pdf="figures/lens_comparison.pdf",
        png=report(
            "figures/lens_comparison.png",
            caption="../report/lens_comparison.rst",
            category="1. Layer curves",
        ),
        headlines_pdf="figures/lens_headlines.pdf",
        lens_headlines=report(
            "figures/lens_headlines.png",
            caption="../report/lens_headlines.rst",
            category="2. Exit policies",
        ),
        trends_pdf="figures/lens_trends.pdf",
        lens_trends=report(
            "figures/lens_trends.png",
            caption="../report/lens_trends.rst",
            category="3. Trends",
        ),
    log:
        "results/logs/figures/lens_comparison.log",
    conda:
        "../../envs/exitbench.yaml"
    script:
        "../scripts/figures_lenses.py"
