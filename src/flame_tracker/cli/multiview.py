"""``flame-tracker multiview``: one head seen by several synchronised, calibrated cameras."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from flame_tracker.cli.options import Number, check_output_folder, config_option, given, load_config, os_error_message
from flame_tracker.defaults import IMAGE_FOV


@click.command("multiview")
@click.argument("capture", type=click.Path(path_type=Path))
@click.option("--cameras", "-c", required=True,
              help="Calibration: cameras.json (OpenCV K, world-to-camera R, t, width, height, optional dist per "
              "camera) or a NeRF/VHAP transforms.json (OpenGL camera-to-world); or 'estimate' to place the "
              "cameras from the face in every view (uncalibrated rigs, photos of one pose from several sides).")
@click.option("--image-fov", default=IMAGE_FOV, show_default=True, type=Number(1.0, 150.0),
              help="With --cameras estimate: each picture's field of view over its longer side (degrees).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the results (created if missing).")
@click.option("--unit", type=click.Choice(["m", "cm", "mm"]), default="m", show_default=True,
              help="Unit of the calibration's translations (the model is in metres).")
@click.option("--model", "-m", default=None,
              help="Head model: a FLAME .pkl, the ICT-FaceKit model (default), or a cached .npz.")
@click.option("--landmarker", default=None, type=click.Path(dir_okay=False),
              help="MediaPipe face_landmarker.task (default: found as for `flame-tracker image`).")
@click.option("--sync", type=click.Choice(["index", "timestamps"]), default="index", show_default=True,
              help="Pair the cameras' videos by frame index (triggered rigs) or by timestamps (the first camera's "
              "frames; each other camera's nearest frame within half a frame, else none).")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1), help="Use every N-th timestep.")
@click.option("--max-frames", default=None, type=click.IntRange(1), help="Stop after this many timesteps.")
@click.option("--fps", default=None, type=Number(0.001),
              help="Frame rate of image folders: they are then smoothed over time like videos (default: "
              "timesteps fitted each on its own).")
@click.option("--smooth/--no-smooth", default=None,
              help="Smooth the head pose and expression over time as for monocular video (default: for videos, "
              "and image folders given --fps).")
@click.option("--photometric", is_flag=True,
              help="Refine the landmark fit against the pictures: the identity, head poses and expressions that make "
              "every view agree on the face's colours (about 0.4 s per view on a laptop CPU; identity error about "
              "a third lower on synthetic captures).")
@click.option("--overlay/--no-overlay", default=True, show_default=True,
              help="Write overlay/<t>.png: every view with the fitted mesh and landmarks.")
@click.option("--meshes/--no-meshes", default=True, show_default=True,
              help="Write meshes/<t>.obj: the fitted head in world coordinates.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@click.pass_context
def multiview(ctx: click.Context, capture: Path, cameras: str, image_fov: float, out_dir: Path, unit: str,
              model: str | None, landmarker: str | None, sync: str, every: int, max_frames: int | None,
              fps: float | None, smooth: bool | None, photometric: bool, overlay: bool, meshes: bool, quiet: bool,
              config_path: Path | None) -> None:
    """Fit one head per timestep and one identity to CAPTURE, a folder with one sub-folder of images
    (CAPTURE/cam_00/000000.png ...) or one video (CAPTURE/cam_00.mp4) per camera of the calibration,
    synchronised by frame index (or --sync timestamps). The cameras are fixed and known (or, with --cameras
    estimate, placed from the face in every view first); every view that sees the face contributes the
    landmarks it sees. Writes into --out: frames/<t>.npz and tracking.npz (head pose
    in world coordinates, per-camera K and model-to-camera matrices, landmarks), meshes/, overlay/,
    cameras.json, summary.json.
    """
    import warnings

    from flame_tracker.multiview.cameras import MultiviewError
    from flame_tracker.multiview.pipeline import track_multiview

    check_output_folder(out_dir)
    config = load_config(config_path)
    if not given(ctx, "smooth") and "multiview.smooth" in config.explicit:
        smooth = config.multiview.smooth  # the file decides; otherwise the capture kind does (videos)
    options = replace(config.multiview, photometric=True) if photometric else config.multiview
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = track_multiview(capture, cameras, out_dir, model=model, unit=unit, every=every,
                                      max_frames=max_frames, fps=fps, smooth=smooth, sync=sync,
                                      options=options, overlay=overlay, meshes=meshes,
                                      progress=not quiet, landmarker=landmarker, image_fov=image_fov)
        except MultiviewError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(os_error_message(exc)) from exc
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    for w in caught:
        if w.category is UserWarning:
            click.echo(f"warning: {w.message}", err=True)
    click.echo(f"calibration: {summary['calibration']}")
    if summary.get("camera_estimate"):
        spread = ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} -"
                           for k, v in summary["camera_estimate"]["spread_deg"].items())
        click.echo(f"cameras placed relative to {summary['camera_estimate']['reference']}; disagreement between "
                   f"timesteps (degrees): {spread}")
    if summary.get("photometric"):
        solves = summary["photometric"]["solves"]
        click.echo(f"photometric refinement: {sum(s['views'] for s in solves)} views in {len(solves)} solve(s); "
                   f"colour disagreement between views {solves[0]['photo_start']:.4f} -> {solves[0]['photo_end']:.4f} "
                   "on the keyframes" + ("" if summary["photometric"].get("kept", True) else " (not kept)"))
    errs = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in summary["reproj_px_per_camera"].items())
    click.echo(f"{summary['timesteps_with_face']}/{summary['n_timesteps']} timesteps fitted from "
               f"{summary['n_cameras']} cameras (mean 68-point error px: {errs}) -> {out_dir}")
