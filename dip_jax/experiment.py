"""Former home of the experiment pipeline, now `dip_jax.app` (kept for benchmarks/device_check.py).

New code imports `dip_jax.app.observations`, `.fitting` and `.runs`.
"""

from dip_jax.app.fitting import CheckpointOptions, SampleResult, check_memory, classifier_for, fit_samples
from dip_jax.app.observations import Sample, prepare_samples
from dip_jax.app.runs import report, sample_metrics, write_run

__all__ = ["CheckpointOptions", "Sample", "SampleResult", "check_memory", "classifier_for", "fit_samples",
           "prepare_samples", "report", "sample_metrics", "write_run"]
