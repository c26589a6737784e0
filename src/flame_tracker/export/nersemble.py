"""A tracked run as NeRSemble's Mono-FLAME-Avatar benchmark lays out its data
(``../shared/reference/export-formats.md`` §5; checked against ``nersemble_benchmark``'s
``data/benchmark_data.py`` and ``models/flame.py``)::

    calibration/camera_params.json                     {"world_2_cam": {"00": 4x4}, "intrinsics": {"00": 3x3}}
    sequences/<name>/tracking/flame2023_tracking.npz   FlameTracking: shape (1,300), expression (T,100),
                                                       rotation (T,3), rotation_matrices (T,3,3),
                                                       translation (T,3), jaw (T,3), frames (T,),
                                                       scale (1,1), neck (T,3), eyes (T,6)
    sequences/<name>/images/cam_00.mp4                 the tracked frames, in order
    sequences/<name>/tracking/frames.json              timestep -> source frame index and time

Its ``FlameProvider`` evaluates FLAME with no global rotation and no translation, then maps the
vertices to world as ``scale · R · X + translation`` with ``R`` from ``rotation`` as intrinsic
``XYZ`` Euler angles (``rotation_matrices`` holds the same ``R``). World = the OpenCV frame of the one
camera here (``world_2_cam`` the identity, ``K`` in pixels of the frames): the head moves, the
camera stays. FLAME 2023 runs only (the benchmark's tracking is FLAME 2023); the npz holds exactly
the ten keys, since the benchmark builds its dataclass from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flame_tracker.export.run import FLAME_FORMATS, TrackedRun, check_flame, each_frame, pad, source_video, write_folder

N_SHAPE, N_EXPR = FLAME_FORMATS["nersemble"][2:]


def export_nersemble(run: TrackedRun, model, out_dir: str | Path, video: str | Path | None = None,
                     name: str | None = None) -> Path:
    """Write the NeRSemble layout for ``run`` into ``out_dir`` (sequence ``name``, default the run
    folder's name); frames decoded again from ``video`` (default: the run's)."""
    from scipy.spatial.transform import Rotation

    from flame_tracker.video.encode import VideoWriter

    check_flame(run, model, *FLAME_FORMATS["nersemble"])
    src = source_video(run, video)
    a = run.arrays
    seq = name or run.folder.resolve().name
    w2c = a["w2c_opencv"].astype(np.float64)  # model -> camera, per frame
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]

    def write(tmp: Path) -> None:
        (tmp / "calibration").mkdir()
        track = tmp / "sequences" / seq / "tracking"
        track.mkdir(parents=True)
        (tmp / "sequences" / seq / "images").mkdir()
        K = a["K_px"][0].astype(np.float64)
        (tmp / "calibration" / "camera_params.json").write_text(json.dumps(
            {"world_2_cam": {"00": np.eye(4).tolist()}, "intrinsics": {"00": K.tolist()}}, indent=1))
        n = run.n_frames
        np.savez(track / "flame2023_tracking.npz",
                 shape=pad(a["shape"][:1], N_SHAPE), expression=pad(a["exp"], N_EXPR),
                 rotation=Rotation.from_matrix(R).as_euler("XYZ").astype(np.float32),
                 rotation_matrices=R.astype(np.float32), translation=t.astype(np.float32),
                 jaw=a["jaw_pose"].astype(np.float32), frames=np.arange(n), scale=np.ones((1, 1), np.float32),
                 neck=a["neck_pose"].astype(np.float32), eyes=a["eye_pose"].astype(np.float32))
        (track / "frames.json").write_text(json.dumps({
            "source_video": str(src), "source_frame": [int(f) for f in a["frame"]],
            "time_s": [round(float(x), 6) for x in a["time_s"]]}, indent=1))
        # the exported frames' rate: a subsampled run's, and not lowered by frames left out (no face)
        step = float(np.median(np.diff(a["time_s"]))) if n > 1 else 0.0
        fps = 1.0 / step if step > 0 and abs(step * run.fps - 1.0) > 1e-3 else run.fps  # (the container's own)
        with VideoWriter(tmp / "sequences" / seq / "images" / "cam_00.mp4", fps=fps, crf=12) as out:
            for _, image in each_frame(run, src):
                out.write(image)

    return write_folder(out_dir, "nersemble", write)


__all__ = ["export_nersemble"]
