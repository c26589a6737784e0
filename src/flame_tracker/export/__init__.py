"""Exports of tracked runs for animation tools: ARKit / Live Link Face CSV (:mod:`.arkit`) and glTF
(:mod:`.gltf`), read from a finished ``flame-tracker video`` folder (:mod:`.run`)."""

from flame_tracker.export.run import ExportError, TrackedRun, load_run

__all__ = ["ExportError", "TrackedRun", "load_run"]
