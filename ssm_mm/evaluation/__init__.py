"""Streaming evaluation (SPEC §8): every number comes from running models through the public
:class:`~ssm_mm.streaming.session.StreamingSession`, tick by tick, as a user would.

* :mod:`~ssm_mm.evaluation.tasks`   — references of one stream (tick labels, QA, proactive) and scoring;
* :mod:`~ssm_mm.evaluation.harness` — one model over a list of streams (decode, drive in batches, pool);
* :mod:`~ssm_mm.evaluation.sweeps`  — robustness sweeps: a world's held-out streams, one knob changed;
* :mod:`~ssm_mm.evaluation.long`    — long streams: multiples of the training length, scores by age;
* :mod:`~ssm_mm.evaluation.suite`   — models × datasets, ``results.json`` and plots;
* :mod:`~ssm_mm.evaluation.report`  — the terminal table, the ``results.json`` schema, PNG plots.

Entry point: ``python eval/run.py model=DIR data.manifest=PATH [eval.KEY=VALUE ...]``; train.py runs
:func:`run_suite` on its validation set at the end of a run. The metrics themselves live in
:mod:`ssm_mm.metrics` (shared with training-time validation).
"""

from ssm_mm.evaluation.harness import EvalError, EvalOptions, ModelEval, evaluate
from ssm_mm.evaluation.report import format_lengths, format_table, headline
from ssm_mm.evaluation.suite import (
    Dataset,
    datasets_from_config,
    length_datasets,
    load_dataset,
    model_labels,
    run_suite,
)

__all__ = [
    "Dataset",
    "EvalError",
    "EvalOptions",
    "ModelEval",
    "datasets_from_config",
    "evaluate",
    "format_lengths",
    "format_table",
    "headline",
    "length_datasets",
    "load_dataset",
    "model_labels",
    "run_suite",
]
