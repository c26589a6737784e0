"""ARKit-52 blendshape curves as a Live Link Face CSV (Unreal's LiveLinkFaceImporter, Blender and
Unity importers): from the fitted ICT expression (its channels are ARKit's shapes with ``_L``/``_R``
suffixes) and from MediaPipe's raw blendshape scores.

Layout (``../shared/reference/export-formats.md`` §7): ``Timecode,BlendShapeCount,`` the 52 ARKit
shapes in ARKit's order in PascalCase, then ``HeadYaw,HeadPitch,HeadRoll`` and each eye's
``Yaw,Pitch,Roll``; one row per frame; ``Timecode`` = ``HH:MM:SS:FF.mmm``; ``BlendShapeCount`` = 61.
Rotations are in radians, relative to the camera, in ARKit's face frame (y up, z towards the
camera; the head facing the camera is 0), decomposed as yaw (y), pitch (x), roll (z): HeadYaw > 0
turns the face towards the image's right (the subject's left), HeadPitch > 0 tilts it down, HeadRoll
> 0 turns its top towards the image's left.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flame_tracker.export.run import ExportError, TrackedRun

#: The 52 ARKit blendshapes in ARKit's (and Live Link Face's) order.
ARKIT_52 = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawRight", "jawLeft", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthRight", "mouthLeft", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
ROTATIONS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
             "RightEyeYaw", "RightEyePitch", "RightEyeRoll")


def _key(name: str) -> str:
    """ARKit / ICT / MediaPipe names to one key: lower case, ``_L``/``Left`` -> ``left``."""
    low = name.lower()
    for suffix, side in (("_l", "left"), ("_r", "right")):
        if low.endswith(suffix):
            return low[: -len(suffix)] + side
    return low


def arkit_weights(names: Sequence[str], weights: np.ndarray) -> np.ndarray:
    """``[T, 52]`` ARKit curves from weights ``[T, K]`` named ``names`` (ICT's ``eyeBlink_L`` or
    MediaPipe's ``eyeBlinkLeft``): matched by name; an unsided ARKit shape (browInnerUp, cheekPuff)
    takes the mean of both sides; a shape without a channel (ICT has no tongueOut) stays 0."""
    index = {_key(n): i for i, n in enumerate(names)}
    out = np.zeros((weights.shape[0], len(ARKIT_52)), np.float64)
    for j, shape in enumerate(ARKIT_52):
        k = _key(shape)
        if k in index:
            out[:, j] = weights[:, index[k]]
        elif k + "left" in index and k + "right" in index:
            out[:, j] = 0.5 * (weights[:, index[k + "left"]] + weights[:, index[k + "right"]])
    return np.clip(out, 0.0, 1.0)


def _yaw_pitch_roll(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle ``[T, 3]`` in a y-up, z-towards-the-viewer frame -> (yaw, pitch, roll) radians."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rotvec).as_euler("YXZ")  # R = Ry(yaw) Rx(pitch) Rz(roll)


def rotations(run: TrackedRun, eye_rest: np.ndarray | None = None) -> np.ndarray:
    """``[T, 9]`` head (relative to the camera) and eye rotations, radians (:data:`ROTATIONS`).
    ``eye_rest [6]``: the model's rest gaze (``HeadModel.eye_rest_rotvec``); the eye angles are then
    the gaze relative to straight ahead, ``R(eye_pose) @ R(eye_rest)`` (ICT's eyes converge at rest:
    its ``eye_pose`` of a person looking ahead turns each eye ~7° outwards), as ARKit means them."""
    import torch
    from scipy.spatial.transform import Rotation

    from flame_tracker.camera import to_head_centric

    head, _ = to_head_centric(torch.as_tensor(run.arrays["pose6"], dtype=torch.float64))  # OpenGL camera frame
    eyes = run.arrays["eye_pose"].astype(np.float64).reshape(-1, 6)  # FLAME joints 3 (subject's left eye), 4 (right)
    if eye_rest is not None:
        eyes = np.concatenate([(Rotation.from_rotvec(eyes[:, s:s + 3]) * Rotation.from_rotvec(eye_rest[s:s + 3]))
                               .as_rotvec() for s in (0, 3)], 1)
    return np.concatenate([_yaw_pitch_roll(head.numpy()), _yaw_pitch_roll(eyes[:, :3]),
                           _yaw_pitch_roll(eyes[:, 3:])], 1)


#: Gaze angle (degrees from straight ahead) at which an ARKit ``eyeLook*`` curve reaches 1: fitted to
#: MediaPipe's scores on the shared clips' frames (the fitted gaze against ``eyeLookIn/Out``: 34°,
#: correlation 0.81, RMS 0.12 against 0.23 for zeros; ``eyeLookDown``: 23°, 0.70). The clips barely
#: look up (MediaPipe's ``eyeLookUp`` stays under 0.2), so up uses down's.
GAZE_FULL_DEG = {"In": 34.0, "Out": 34.0, "Down": 23.0, "Up": 23.0}


def gaze_curves(rots: np.ndarray) -> dict[str, np.ndarray]:
    """ARKit's eight ``eyeLook*`` curves ``{name: [T]}`` from the eyes' gaze (``rots [T, 9]`` of
    :func:`rotations` with the model's rest gaze): each direction's angle over
    :data:`GAZE_FULL_DEG`, clipped to [0, 1]. The subject's left eye looks out when its yaw is
    positive (towards the subject's left), the right eye when negative; pitch > 0 looks down."""
    out = {}
    for side, yaw, pitch, sign in (("Left", rots[:, 3], rots[:, 4], 1.0), ("Right", rots[:, 6], rots[:, 7], -1.0)):
        yaw_deg, pitch_deg = np.degrees(yaw) * sign, np.degrees(pitch)
        for what, angle in (("Out", yaw_deg), ("In", -yaw_deg), ("Down", pitch_deg), ("Up", -pitch_deg)):
            out[f"eyeLook{what}{side}"] = np.clip(angle / GAZE_FULL_DEG[what], 0.0, 1.0)
    return out


def timecodes(times: np.ndarray, fps: float) -> list[str]:
    """``HH:MM:SS:FF.mmm`` of each time (seconds): FF the frame within the second at ``fps``, mmm
    the thousandths of a frame (rounded, carried into FF and the seconds)."""
    out = []
    per_second = int(round(fps * 1000))  # thousandths of a frame in one second
    for t in times:
        whole = int(np.floor(t + 1e-9))
        units = int(round((t - whole) * fps * 1000))
        if units >= per_second:  # rounded up to the next second
            whole, units = whole + 1, units - per_second
        ff, ms = divmod(units, 1000)
        out.append(f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}:{ff:02d}.{ms:03d}")
    return out


def write_csv(path: str | Path, curves: np.ndarray, rots: np.ndarray, times: np.ndarray, fps: float) -> Path:
    """One Live Link Face CSV: curves ``[T, 52]``, rotations ``[T, 9]``."""
    path = Path(path)
    header = ["Timecode", "BlendShapeCount"] + [s[0].upper() + s[1:] for s in ARKIT_52] + list(ROTATIONS)
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for tc, c, r in zip(timecodes(times, fps), curves, rots):
            w.writerow([tc, len(ARKIT_52) + len(ROTATIONS)] + [f"{v:.6f}" for v in c] + [f"{v:.6f}" for v in r])
    tmp.replace(path)
    return path


def export_arkit(run: TrackedRun, out_dir: str | Path, eye_rest: np.ndarray | None = None) -> list[Path]:
    """``arkit_fitted.csv`` (the fitted ICT expression) and ``arkit_mediapipe.csv`` (MediaPipe's raw
    scores) in ``out_dir``. A run without named expressions (FLAME) gets the MediaPipe file only.
    ``eye_rest``: the run's model's rest gaze (:func:`rotations`): the eye angles are then the gaze,
    and the fitted file's ``eyeLook*`` curves come from it (:func:`gaze_curves`); None: the eye
    angles are ``eye_pose``'s own and the curves the model's channels."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rots, times = rotations(run, eye_rest), run.times
    written = []
    names = [str(n) for n in run.arrays.get("expr_names", [])]
    if names:
        curves = arkit_weights(names, run.arrays["exp"])
        if eye_rest is not None:  # the gaze is the eyeballs' rotation, not a blendshape of the model: from the eyes
            for name, values in gaze_curves(rots).items():
                curves[:, ARKIT_52.index(name)] = values
        written.append(write_csv(out_dir / "arkit_fitted.csv", curves, rots, times, run.fps))
    mp_names = [str(n) for n in run.arrays.get("blendshape_names", [])]
    if mp_names and run.arrays["blendshape_scores"].shape[-1] == len(mp_names):
        # MediaPipe's scores exist only where it found the face (not on optical-flow frames)
        seen = np.asarray(run.arrays.get("valid", np.ones(run.n_frames, bool)), bool)
        written.append(write_csv(out_dir / "arkit_mediapipe.csv",
                                 arkit_weights(mp_names, run.arrays["blendshape_scores"][seen]), rots[seen],
                                 times[seen], run.fps))
    if not written:
        raise ExportError(f"{run.folder}: the run has neither named (ARKit) expressions nor MediaPipe scores; "
                          "track it with the ICT-FaceKit model (the default) to get ARKit curves")
    return written


__all__ = ["ARKIT_52", "GAZE_FULL_DEG", "ROTATIONS", "arkit_weights", "export_arkit", "gaze_curves", "rotations",
           "timecodes", "write_csv"]
