"""Make the README's multi-view figure from synthetic data only: a random ICT-FaceKit identity
rendered by 6 calibrated cameras over 150 degrees, tracked with ``flame-tracker multiview`` (MediaPipe
in every view, nothing taken from the truth); the figure is the command's own overlay of one
timestep. Run: ``python docs/make_multiview_figure.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2

from flame_tracker.evaluation.multiview import synthetic_capture
from flame_tracker.model import load_model
from flame_tracker.multiview.pipeline import track_multiview

OUT = Path(__file__).with_name("multiview_example.png")


def main() -> None:
    model = load_model()
    cap = synthetic_capture(model, 6, 2, seed=12)
    with tempfile.TemporaryDirectory() as tmp:
        root = cap.write(Path(tmp) / "capture")
        track_multiview(root, root / "cameras.json", Path(tmp) / "out", model=model, meshes=False)
        grid = cv2.imread(str(Path(tmp) / "out" / "overlay" / "000001.png"))
    grid = cv2.resize(grid, (grid.shape[1] * 2 // 3, grid.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(OUT), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
