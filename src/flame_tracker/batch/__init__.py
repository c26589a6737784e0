"""Batch processing of many videos and photos on Ray (:mod:`.run`), from files, folders, globs or a
manifest (:mod:`.items`)."""

from flame_tracker.batch.items import BatchInputError, Item, collect_items
from flame_tracker.batch.run import BatchSummary, RayMissingError, run_batch, start_local_ray

__all__ = ["BatchInputError", "BatchSummary", "Item", "RayMissingError", "collect_items", "run_batch",
           "start_local_ray"]
