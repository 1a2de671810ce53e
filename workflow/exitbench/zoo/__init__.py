"""The embedded default's model zoo: a BPE tokenizer and small causal LMs trained offline.

No weights can be downloaded on a fresh offline machine, so the default study
trains its own models (config ``zoo:``, schema ``workflow/schemas/zoo.schema.yaml``)
on the embedded corpora (:mod:`exitbench.workloads`), and then loads them
through exactly the code used for hub models. The study's model entries of the
zoo (``zoo-<run>``, ``zoo-<run>-step-<N>``) are derived from ``zoo.runs`` when
the config is validated (:func:`exitbench.zoo.plan.derive_study`).

Modules: :mod:`~exitbench.zoo.plan` (run specs, rule settings, the derived
model entries), :mod:`~exitbench.zoo.recipes` (per recipe: config, checks,
cost, metadata), :mod:`~exitbench.zoo.data` (corpus data and windows),
:mod:`~exitbench.zoo.tokenizer` and :mod:`~exitbench.zoo.train`. Every function
takes the ``zoo:`` section as :func:`exitbench.config.validate_config` returns it
(or the part :func:`rule_settings` gives a rule) and trusts it.

Steps (rules in ``workflow/rules/zoo.smk``): ``zoo_tokenizer`` trains the BPE
(``results/zoo/tokenizer``), ``zoo_data`` encodes every data source once
(``results/zoo/data``), ``zoo_train`` trains one run (``results/zoo/<run>``).

Data. Only the *training* split of each corpus is used: a document is held
out iff ``int(sha256(f"{seed}:{doc_id}"), 16) / 2**256 < heldout_fraction``
(:func:`exitbench.workloads.split_of`), the rule the analysis workloads use
with ``subset: heldout`` (they take ``zoo.heldout_fraction``), so the zoo never
sees the documents it is measured on. Per source, documents are ordered by
``sha256(f"{seed}:zoo:{doc_id}")``, encoded, each followed by
``<|endoftext|>``, concatenated and cut into windows of ``seq_len`` tokens (the
tail is dropped). Slot ``i`` of a run's window plan takes source ``c`` where
the i-th draw of ``Generator(PCG64(seed)).random()`` falls in ``c``'s share of
the normalised ``zoo.corpora`` weights, and the source's next window in a
seeded permutation of its windows (a fresh one per epoch). Every choice depends
only on the seed and ``i``, so all runs see the same windows in the same order,
a longer budget extending a shorter one.

Task ``qa`` (a tuned run) trains on ``"Q: What is <title>?\\nA: <first
paragraph>"`` pairs built from the python-docs *training* topics, packed the
same way.

Training. AdamW (decay on matrices only), ``lr(s)`` = linear warmup over ``w``
steps, then cosine (or linear) decay to ``min_lr_ratio * lr``; ``steps =
ceil(train_tokens / (batch_size * seq_len))``; next-token cross entropy (plus
``router_aux_loss_coef`` times the load-balancing loss for MoE); global
gradient-norm clipping; dropout 0. ``torch.manual_seed(seed)`` before the
model is built and ``torch.use_deterministic_algorithms(True)``: the same
config and thread count give the same loss curve and weights, bit for bit.

A run ``<run>`` writes ``results/zoo/<run>/``: ``final/`` and
``checkpoints/step-<N>/`` (``save_pretrained`` model + tokenizer), ``loss.csv``
(step, tokens, loss, lr), ``loss.png`` and ``train.json`` (provenance).
"""

from exitbench.zoo.data import (
    DATA_INFO,
    QA_CORPUS,
    QA_SOURCE,
    build_data,
    encode_windows,
    load_windows,
    qa_example,
    source_texts,
    task_sources,
    tokenizer_sha256,
    training_documents,
    window_plan,
)
from exitbench.zoo.plan import (
    ARCHITECTURE_KEYS,
    DATA_NAME,
    ENDOFTEXT,
    MODEL_PREFIX,
    RESERVED_NAMES,
    STEP_KEYS,
    TRAIN_INFO,
    ZOO_ROOT,
    ZooError,
    base_inputs,
    base_run,
    check_runs,
    derive_study,
    model_name,
    parameter_counts,
    rule_settings,
    run_cost,
    run_priorities,
    run_spec,
    total_steps,
    zoo_models,
    zoo_run_dir,
)
from exitbench.zoo.recipes import RECIPES, Recipe, count_parameters, model_config, model_parameters
from exitbench.zoo.tokenizer import TOKENIZER_INFO, train_tokenizer
from exitbench.zoo.train import (
    build_model_config,
    deterministic,
    learning_rate,
    loss_curve,
    plot_loss,
    state_sha256,
    train_run,
)

__all__ = [
    "ARCHITECTURE_KEYS",
    "DATA_INFO",
    "DATA_NAME",
    "ENDOFTEXT",
    "MODEL_PREFIX",
    "QA_CORPUS",
    "QA_SOURCE",
    "RECIPES",
    "RESERVED_NAMES",
    "STEP_KEYS",
    "TOKENIZER_INFO",
    "TRAIN_INFO",
    "ZOO_ROOT",
    "Recipe",
    "ZooError",
    "base_inputs",
    "base_run",
    "build_data",
    "build_model_config",
    "check_runs",
    "count_parameters",
    "derive_study",
    "deterministic",
    "encode_windows",
    "learning_rate",
    "load_windows",
    "loss_curve",
    "model_config",
    "model_name",
    "model_parameters",
    "parameter_counts",
    "plot_loss",
    "qa_example",
    "rule_settings",
    "run_cost",
    "run_priorities",
    "run_spec",
    "source_texts",
    "state_sha256",
    "task_sources",
    "tokenizer_sha256",
    "total_steps",
    "train_run",
    "train_tokenizer",
    "training_documents",
    "window_plan",
    "zoo_models",
    "zoo_run_dir",
]
