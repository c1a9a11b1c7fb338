"""Benchmarks, one module each: ``cli`` (``python -m drl_tune.bench``: data, epoch, diagnosis, overhead, study,
all), ``gpu`` (the one-shot GPU measurement), ``diagnosis`` (k-means backends), ``data`` (loading speed) and
``reference`` (the plain loop every ratio is measured against). They print ratios measured in one run."""
