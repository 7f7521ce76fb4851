"""Analyses of finished runs: classification metrics and their uncertainty (intervals, paired tests), reading
run folders, comparisons between configurations, the summary's tables, words and figures, and the summary of
what the models look at.

Reads run files only (``metrics.json``, ``predictions.csv``): may import ``data`` (its TensorFlow-free facts)
and ``common``, never the model, TensorFlow or the sweep. The run stage uses its metrics and intervals.
"""
