"""``flame-tracker export``: a tracked video run (or a set of photo results) in the files an avatar
trainer or animation tool reads."""

from __future__ import annotations

from pathlib import Path

import click

from flame_tracker.export import FORMATS


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "-f", "fmt", required=True, help=f"One of: {', '.join(FORMATS)}.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the export (default: RUN/export-FORMAT).")
@click.option("--model", "-m", "model_path", default=None,
              help="The head model the run was tracked with (default: the open ICT-FaceKit model).")
@click.option("--video", "--images", "video", type=click.Path(path_type=Path), default=None,
              help="The tracked video, when it moved since tracking (the folder formats re-decode its frames); "
              "for photo results, the folder that holds the photos now.")
@click.option("--masks", default=None,
              help="gaussian-avatars: also write fg_masks/: 'model' (the fitted head's silhouette) or a folder of "
              "your mattes, named by source frame index (000123.png) for a video, by the photo's name for photos.")
def export(run: Path, fmt: str, out_dir: Path | None, model_path: str | None, video: Path | None,
           masks: str | None) -> None:
    """Export RUN, the --out folder of a finished `flame-tracker video` run, or a folder of
    `flame-tracker image` results (one frame per photo, in name order; photos of other sizes or
    focal lengths are scaled about their principal point onto one shared camera; every format
    but arkit-csv needs one identity: fit the photos with --same-person):

    \b
      arkit-csv  arkit_fitted.csv (the fitted ICT expression as ARKit-52 curves) and
                 arkit_mediapipe.csv (MediaPipe's raw scores), Live Link Face layout with head
                 and eye rotations: Unreal's LiveLinkFaceImporter, Blender/Unity importers
      gltf       run.glb: the fitted head with its blendshapes as morph targets, animated per frame
                 (weights, head rotation and translation) and the tracking camera (Blender, three.js);
                 a FLAME run as a mesh sequence (one morph target per frame)
      gaussian-avatars  the VHAP folder GaussianAvatars trains on (images/, flame_param/,
                 canonical_flame_param.npz, transforms*.json, fg_masks/ with --masks); FLAME 2023 runs only
      imavatar   flame_params.json with image/ and mask/ (IMavatar, PointAvatar, SplattingAvatar,
                 MonoGaussianAvatar, BakedAvatar); FLAME 2020 runs only
      insta      INSTA's input (images/, meshes/*.obj, flame/exp/*.txt, canonical.obj, transforms*.json
                 with OpenCV camera-to-world); FLAME 2020 runs only
      nersemble  NeRSemble's Mono-FLAME-Avatar layout (calibration/camera_params.json,
                 sequences/<run>/tracking/flame2023_tracking.npz, images/cam_00.mp4); FLAME 2023 runs only
    """
    import warnings

    from flame_tracker.cli.options import check_output_folder, os_error_message
    from flame_tracker.export import ExportError, export_run

    if run.is_dir():  # (a missing run is said by the export, naming what to give)
        check_output_folder(out_dir if out_dir is not None else run / f"export-{fmt}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            paths = export_run(run, fmt, out_dir, model_path, video, masks)
        except ExportError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a full disk, a folder made read-only
            raise click.ClickException(os_error_message(exc)) from exc
    for w in caught:
        if w.category is UserWarning:
            click.echo(f"warning: {w.message}", err=True)
    for p in paths:
        click.echo(f"{fmt}: {p}")
