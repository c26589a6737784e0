"""``flame-tracker video CLIP --out DIR``: track a monocular video (resumable)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from flame_tracker.cli.options import (
    Number,
    check_one_fov,
    check_output_folder,
    component_options,
    config_option,
    given,
    load_config,
    load_head_model,
    os_error_message,
    with_given,
)
from flame_tracker.defaults import EXPR_CUTOFF_HZ, IMAGE_FOV, POSE_CUTOFF_HZ
from flame_tracker.export import FORMATS


@click.command("video")
@click.argument("clip", type=click.Path(path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder (per-frame npz, tracking.npz, summary.json, overlay.mp4).")
@click.option("--model", "-m", "model_path", type=click.Path(path_type=Path), default=None,
              help="Head model: FLAME .pkl, ICT .npz / FaceXModel folder (default: open ICT model).")
@component_options
@click.option("--start", "start_s", type=Number(), default=0.0, show_default=True,
              help="Start time in seconds.")
@click.option("--end", "end_s", type=Number(), default=None, help="End time in seconds (exclusive).")
@click.option("--every", type=int, default=1, show_default=True, help="Keep every N-th frame.")
@click.option("--fps", type=Number(), default=None,
              help="Subsample to this frame rate (uses the container's timestamps).")
@click.option("--max-frames", type=int, default=None, help="Stop after this many frames.")
@click.option("--image-fov", type=Number(1.0, 150.0), default=IMAGE_FOV, show_default=True,
              help="Field of view in degrees over the frame's longer side (the camera's principal point is the "
              "frame centre; start value with --estimate-fov).")
@click.option("--fov", type=Number(10.0, 50.0), default=None,
              help="Instead of --image-fov: the reference's FOV in degrees over the fitting crop (e.g. 20).")
@click.option("--estimate-fov/--no-estimate-fov", default=False, help="Fit one FOV for the whole video.")
@click.option("--smooth-pose", type=Number(), default=POSE_CUTOFF_HZ, show_default=True,
              help="Pose smoothing cutoff in Hz (inf = none); relaxed where the head turns fast.")
@click.option("--smooth-expr", type=Number(), default=EXPR_CUTOFF_HZ, show_default=True,
              help="Expression smoothing cutoff in Hz (inf = none).")
@click.option("--overlay/--no-overlay", default=False,
              help="Write overlay.mp4 (mesh + landmarks over the frames; costs a render per frame).")
@click.option("--side-by-side/--no-side-by-side", default=False, help="Overlay video shows the input next to it.")
@click.option("--meshes", type=click.Choice(["ply", "obj"]), default=None,
              help="Also export the mesh of every tracked frame.")
@click.option("--photometric/--no-photometric", default=False,
              help="Photometric tracking: fit one texture on the identity keyframes (texture.png), then refine "
                   "every frame against it (per-frame SH light saved as light); ~0.4-1 s per frame.")
@click.option("--export", "exports", multiple=True, type=click.Choice(list(FORMATS)),
              help="After tracking, also export the run (as `flame-tracker export`); repeatable.")
@click.option("--face", default="largest", show_default=True,
              help="Which face to follow when several are in the picture: largest, center, left, right, "
              "'index N' (counted from the left, from 0) or 'near X,Y' (pixels); the same person is then "
              "followed, not whichever face is largest later.")
@click.option("--roi/--no-roi", default=True, show_default=True,
              help="Find small faces (tiled search) and follow them, or one of several people, with a crop around "
              "the face; --no-roi: MediaPipe on the whole (downscaled) frame only.")
@click.option("--flow/--no-flow", default=True, show_default=True,
              help="Follow the head by optical flow through frames where no face is detected (profiles, a hand "
              "over the face); --no-flow: interpolate short gaps, drop long ones.")
@click.option("--landmarks", type=click.Choice(["68", "dense"]), default="68", show_default=True,
              help="Points the per-frame fits match: the 68 iBUG points (the reference's objective), or MediaPipe's "
              "468 mesh points where the model's detector embedding puts them (about 1.9x the fitting time; no more "
              "accurate on our measurements, docs/accuracy.md).")
@click.option("--detect-threads", type=click.IntRange(1, None), default=None,
              help="Threads detecting landmarks at once, each on its own blocks of frames (128, fewer in a short clip; "
              "default: the cores "
              "this process may use, at most 4, ~180 MB each); the landmarks are the same for any number.")
@click.option("--landmarker", default=None, type=click.Path(dir_okay=False),
              help="MediaPipe face_landmarker.task. Default: $FLAME_TRACKER_FACE_LANDMARKER, the data folder, "
              "or the user cache (see `flame-tracker assets`).")
@click.option("--verbose", is_flag=True, help="Show MediaPipe's own log lines.")
@click.option("--force", is_flag=True, help="Redo a finished (or different) run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@config_option
@click.pass_context
def video(ctx: click.Context, clip: Path, out_dir: Path, model_path: Path | None, shape_components: int | None,
          expr_components: int | None, start_s: float, end_s: float | None,
          every: int, fps: float | None, max_frames: int | None, image_fov: float, fov: float | None,
          estimate_fov: bool,
          smooth_pose: float, smooth_expr: float, overlay: bool, side_by_side: bool,
          meshes: str | None, photometric: bool, exports: tuple[str, ...], face: str, roi: bool, flow: bool,
          landmarks: str, detect_threads: int | None, landmarker: str | None, verbose: bool, force: bool, quiet: bool,
          config_path: Path | None) -> None:
    """Track every frame of a talking-head video CLIP into --out DIR.

    One identity for the whole video, per-frame fits warm-started from the previous frames, and
    smoothing over the whole sequence. An interrupted run resumes when run again with the same
    arguments; a finished one is left alone unless --force.
    """
    from flame_tracker.detection.search import FaceChoice
    from flame_tracker.errors import FlameTrackerError, NoFaceError
    from flame_tracker.video.decode import VideoError
    from flame_tracker.video.pipeline import track_video
    from flame_tracker.video.store import OutputMismatchError

    try:
        face = str(FaceChoice.parse(face))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--face") from exc
    check_one_fov(ctx)
    check_output_folder(out_dir)
    # the config file's settings, then the options given on the command line
    config = load_config(config_path)
    values = dict(image_fov=image_fov, estimate_fov=estimate_fov, smooth_pose=smooth_pose, smooth_expr=smooth_expr,
                  flow=flow, start_s=start_s, end_s=end_s, every=every, fps=fps, max_frames=max_frames,
                  overlay=overlay, side_by_side=side_by_side, meshes=meshes, photometric=photometric, face=face,
                  roi=roi, fov=fov, landmarks=landmarks, detect_threads=detect_threads)
    config = with_given(ctx, config, "track", {"image_fov": "image_fov", "estimate_fov": "estimate_fov",
                                               "smooth_pose": "pose_cutoff_hz", "smooth_expr": "expr_cutoff_hz",
                                               "flow": "flow", "fov": "fov", "landmarks": "landmarks"}, values)
    if given(ctx, "fov"):  # the reference's crop FOV replaces the image-level one
        config = config.with_values("track", {"image_fov": "none"}, "command line")
    config = with_given(ctx, config, "video", {k: k for k in ("start_s", "end_s", "every", "fps", "max_frames",
                                                              "overlay", "side_by_side", "meshes", "photometric",
                                                              "face", "roi", "detect_threads")}, values)
    topts, vopts = config.track, config.video
    model: Any = model_path  # a path, or the model loaded here (other component counts, or checked for --export)
    if shape_components or expr_components or exports:
        model = load_head_model(model_path, shape_components, expr_components)
    if exports:  # a format the model cannot take is said before tracking, not after
        from flame_tracker.export import ExportError, check_export_model

        for fmt in exports:
            try:
                check_export_model(fmt, model)
            except ExportError as exc:
                raise click.ClickException(f"--export {fmt}: {exc}") from exc
    if landmarker is not None:  # a wrong path is said before a run folder is made
        from flame_tracker.assets import AssetError, face_landmarker_path

        try:
            face_landmarker_path(landmarker)
        except AssetError as exc:
            raise click.BadParameter(str(exc), param_hint="--landmarker") from exc
    if vopts.fps is not None:  # (a rate above the clip's keeps every frame: say so rather than nothing)
        from flame_tracker.video.decode import probe

        try:
            rate = probe(clip).fps
        except (OSError, VideoError):  # (track_video says what is wrong with the file)
            rate = 0.0
        if rate > 0 and vopts.fps * vopts.every >= rate * 0.999:
            click.echo(f"note: --fps {vopts.fps:g} is not below the clip's {rate:.3g} fps: every frame "
                       f"{'is' if vopts.every == 1 else f'of --every {vopts.every} is'} kept", err=True)
    try:
        summary = track_video(clip, out_dir, model=model, options=topts, video_options=vopts,
                              flow_options=config.flow, photometric_options=config.photometric,
                              force=force, progress=not quiet, verbose=verbose, landmarker_path=landmarker)
    except (FileNotFoundError, VideoError, NoFaceError, OutputMismatchError, ValueError, FlameTrackerError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a full disk, a folder made read-only while running
        raise click.ClickException(f"{os_error_message(exc)} (what was finished is kept in {out_dir})") from exc
    except KeyboardInterrupt:  # (exit 130, as a shell reports Ctrl-C, and as `batch` does)
        from flame_tracker.detection.landmarker import restore_stderr

        restore_stderr()
        click.echo(f"interrupted; what was finished is saved in {out_dir}: run the same command again "
                   "to resume", err=True)
        sys.exit(130)
    click.echo(summary.text())
    if exports:
        from flame_tracker.export import ExportError, export_run

        for fmt in exports:
            try:
                for p in export_run(out_dir, fmt, model=model_path):
                    click.echo(f"{fmt}: {p}")
            except ExportError as exc:
                raise click.ClickException(str(exc)) from exc
