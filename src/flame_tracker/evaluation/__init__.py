"""Accuracy against ground truth: synthetic scenes with known 3-D truth (:mod:`.scenes`), metrics
(:mod:`.metrics`) and full-pipeline evaluation runs (:mod:`.runs`), used by
``benchmarks/accuracy.py`` and the accuracy regression test."""
