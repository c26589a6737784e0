"""What the expression channels of a blendshape model (ICT's ARKit names) mean to the fit.

Landmarks alone do not identify a blendshape rig's weights: many channels move the 68 points
alike, and a single picture cannot tell a high brow from a raised one. The stage-2 priors therefore
use what is known about the channels (measured on ``benchmarks/expressions.py``, docs/accuracy.md):

* **MediaPipe's ARKit scores** centre the prior of the channels whose score means the same thing
  (jaw, mouth, blinks, squints): :func:`mediapipe_prior`. Its brow, eye-wide, cheek and frown scores
  read the face's proportions as much as its expression (neutral renders get ``browInnerUp``
  0.5-0.9, ``browOuterUp`` up to 0.9, ``mouthFrown`` up to 0.5), so those channels rest at 0 unless
  the landmarks need them. (Its ``eyeSquint`` is as wrong on renders, 0.2-0.4, but on real clips
  the eyelid points agree with it: without it the landmark error rose 2.4 %.)
* **Held channels** stay at 0 (:func:`held_channels`): the pupil shapes and ``cheekRaiser`` barely
  move a landmark. (ICT's ``eyeLook*`` shapes move only the eyelids, the eyeballs turn with
  ``eye_pose``; holding them too measured worse: head rotation through a turn to profile 3.34° →
  3.69°, neutral maximum 0.203 → 0.222.)
* **Couplings** (:func:`coupling_matrix`): left and right halves of a symmetric pair move together
  unless the landmarks say otherwise, and antagonists (a blink and a wide eye, a smile and a frown,
  mouth left and right) are not on at once.

FLAME's coefficients have no names and none of this applies to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

# Channels (name prefixes) whose MediaPipe score is not used as the prior's centre (see above).
MEDIAPIPE_UNRELIABLE = ("brow", "eyeWide", "cheek", "mouthFrown", "eyeLook")
# Channels held at 0 on every model with named expressions.
HELD = ("Pupil", "cheekRaiser")
# Antagonists: never both on. Per side where the channels are sided (``{s}``: _L / _R).
EXCLUSIVE = (
    ("mouthLeft", "mouthRight"), ("jawLeft", "jawRight"), ("eyeBlink{s}", "eyeWide{s}"),
    ("mouthSmile{s}", "mouthFrown{s}"), ("browDown{s}", "browInnerUp{s}"), ("browDown{s}", "browOuterUp{s}"),
    ("mouthPucker", "mouthStretch{s}"), ("mouthSmile{s}", "mouthPucker"), ("mouthPress{s}", "jawOpen"),
)


def expr_from_blendshapes(
    expr_names: Sequence[str] | None, names: Sequence[str], scores: np.ndarray | Tensor
) -> Tensor | None:
    """MediaPipe's ARKit blendshape scores ``[52]`` or ``[N, 52]`` on a model's named channels
    (matched by name; unmatched channels 0).

    MediaPipe writes ``eyeBlinkLeft``, ICT ``eyeBlink_L``; both are ARKit names for the subject's side.
    Returns ``None`` when the model has no named expressions.
    """
    if not expr_names:
        return None
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    squeeze = scores_t.ndim == 1
    scores_t = scores_t.reshape(-1, len(names))

    def _key(name: str) -> str:
        for long, short in (("Left", "_L"), ("Right", "_R")):
            if name.endswith(long):
                name = name[: -len(long)] + short
        return name.lower()

    index = {_key(n): i for i, n in enumerate(names)}
    # a sided ICT channel without a sided MediaPipe score (browInnerUp, cheekPuff) takes the unsided one
    src = [index.get(_key(n), index.get(_key(n)[:-2], -1) if _key(n).endswith(("_l", "_r")) else -1)
           for n in expr_names]
    cols = torch.tensor([max(s, 0) for s in src])
    valid = torch.tensor([s >= 0 for s in src], dtype=scores_t.dtype)
    out = scores_t[:, cols] * valid
    return out[0] if squeeze else out


def _prefixed(expr_names: Sequence[str], prefixes: Sequence[str]) -> np.ndarray:
    return np.array([n.startswith(tuple(prefixes)) for n in expr_names], bool)


def mediapipe_prior(
    expr_names: Sequence[str] | None, names: Sequence[str], scores: np.ndarray | Tensor
) -> Tensor | None:
    """The expression prior's centre (and the fit's start) from MediaPipe's scores: their values on
    the channels they describe reliably, 0 on :data:`MEDIAPIPE_UNRELIABLE` ones. ``None`` without
    named expressions."""
    out = expr_from_blendshapes(expr_names, names, scores)
    if out is None or expr_names is None:
        return out
    keep = torch.as_tensor(~_prefixed(expr_names, MEDIAPIPE_UNRELIABLE), dtype=out.dtype)
    return out * keep


def held_channels(model) -> np.ndarray:
    """``[E]`` bool: the channels the fit holds at 0 (:data:`HELD`). All False for models without
    named expressions."""
    names = list(getattr(model, "expr_names", None) or [])
    if not names:
        return np.zeros(int(model.n_expr), bool)
    return _prefixed(names, HELD)


def channel_pairs(expr_names: Sequence[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Index pairs ``(symmetric, exclusive)``: each ``X_L``/``X_R`` pair, and the :data:`EXCLUSIVE`
    antagonists present in ``expr_names``."""
    index = {n: i for i, n in enumerate(expr_names)}
    sym = [(i, index[n[:-2] + "_R"]) for i, n in enumerate(expr_names)
           if n.endswith("_L") and n[:-2] + "_R" in index]
    excl = []
    for a, b in EXCLUSIVE:
        for side in ("_L", "_R") if "{s}" in a + b else ("",):
            na, nb = a.format(s=side), b.format(s=side)
            if na in index and nb in index and (index[na], index[nb]) not in excl:
                excl.append((index[na], index[nb]))
    return sym, excl


def coupling_matrix(expr_names: Sequence[str] | None, w_sym: float, w_exclusive: float) -> np.ndarray | None:
    """``Q [E, E]`` of the coupling prior ``e^T Q e = w_sym·Σ(e_L - e_R)² + w_exclusive·Σ e_a·e_b``
    over :func:`channel_pairs`; ``None`` when it is zero (no named channels or both weights 0)."""
    if not expr_names or (w_sym <= 0 and w_exclusive <= 0):
        return None
    sym, excl = channel_pairs(expr_names)
    q = np.zeros((len(expr_names), len(expr_names)))
    for i, j in sym:
        q[i, i] += w_sym
        q[j, j] += w_sym
        q[i, j] -= w_sym
        q[j, i] -= w_sym
    for i, j in excl:
        q[i, j] += 0.5 * w_exclusive
        q[j, i] += 0.5 * w_exclusive
    return q if np.any(q) else None


def model_coupling(model, options) -> np.ndarray | None:
    """:func:`coupling_matrix` of ``model``'s channels with the weights of ``options`` (any options
    dataclass with ``w_exp_sym`` and ``w_exp_exclusive``, None counting as 0: stage 2, multi-view)."""
    return coupling_matrix(getattr(model, "expr_names", None), float(options.w_exp_sym or 0.0),
                           float(options.w_exp_exclusive or 0.0))


__all__ = ["expr_from_blendshapes", "mediapipe_prior", "held_channels", "channel_pairs", "coupling_matrix",
           "model_coupling", "MEDIAPIPE_UNRELIABLE", "HELD", "EXCLUSIVE"]
