"""Default values that both the option classes and the command line show: one place for each, in a
module the command line can import without torch (it prints its help in a fraction of a second)."""

from __future__ import annotations

# Assumed FOV over the picture's longer side when none is given (one photo cannot identify it): a
# normal lens, between a phone's wide camera (~65°) and a portrait lens (~25°).
IMAGE_FOV = 40.0
# Smoothing cutoffs of a video's per-frame fits (Hz): the rigid pose, and expression, jaw and eyes
# (speech is fast).
POSE_CUTOFF_HZ = 3.0
EXPR_CUTOFF_HZ = 6.0

__all__ = ["IMAGE_FOV", "POSE_CUTOFF_HZ", "EXPR_CUTOFF_HZ"]
