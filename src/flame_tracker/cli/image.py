"""``flame-tracker image``: fit the head model to photos and write the results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flame_tracker.cli.options import (
    Number,
    check_one_fov,
    component_options,
    config_option,
    load_config,
    load_head_model,
    set_values,
    with_given,
)
from flame_tracker.defaults import IMAGE_FOV
from flame_tracker.errors import first_line
from flame_tracker.video.store import PHOTO_CONFIG

if TYPE_CHECKING:
    from flame_tracker.tracker import Result

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: Every setting a `flame-tracker image` run used, in its output folder (beside the photos' files).
CONFIG_NAME = PHOTO_CONFIG


def _stems(paths: list[Path], out_dir: Path | None = None) -> list[str]:
    """Output names: the file stem, made unique (``_1``, ``_2``) when two inputs share one. With
    ``out_dir``, a name whose results there came from another photo (its ``.json``'s ``source``; an
    earlier run's) is passed over too, so that a run never replaces another photo's files and a
    photo fitted again replaces its own."""
    used: set[str] = set()
    out = []
    for p in paths:
        name, n = p.stem, 0
        while name in used or (out_dir is not None and _other_photo(out_dir, name, p)):
            n += 1
            name = f"{p.stem}_{n}"
        used.add(name)
        out.append(name)
    return out


def _other_photo(out_dir: Path, name: str, path: Path) -> bool:
    """Whether ``out_dir`` holds the results of another photo under ``name`` (``--all-faces``'
    ``name_face0``, ... included)."""
    from flame_tracker.io.results import result_source

    for js in (out_dir / f"{name}.json", out_dir / f"{name}_face0.json"):
        if js.is_file():  # (unreadable, or naming no photo: not ours to replace)
            return result_source(js) != path.resolve()
    return False


def _changed_settings(out_dir: Path, now: dict[str, Any], names: list[str]) -> list[str]:
    """``section.key: old -> new`` for the settings that differ from those of an earlier run into
    ``out_dir`` (its settings file), when photos other than this run's ``names`` are there; empty
    otherwise."""
    import json

    try:
        before = json.loads((out_dir / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return []
    faces = tuple(f"{n}_face" for n in names)  # (--all-faces' names)
    others = [js for js in out_dir.glob("*.json")
              if js.name != CONFIG_NAME and js.stem not in names and not js.stem.startswith(faces)]
    if not others:  # (only this run's photos: they are all fitted again with the new settings)
        return []
    now = json.loads(json.dumps(now))  # (as the file holds them: lists, not tuples)
    out = []
    for section, values in now.items():
        old = before.get(section) if isinstance(before, dict) else None
        for key, value in values.items():
            if isinstance(old, dict) and key in old and old[key] != value:
                out.append(f"{section}.{key}: {old[key]} -> {value}")
    return out


def run_images(
    images: list[Path],
    out_dir: Path,
    *,
    model: str | None = None,
    shape_components: int | None = None,
    expr_components: int | None = None,
    device: str | None = None,
    landmarker: str | None = None,
    fov: float | None = None,
    image_fov: float | None = None,
    solver: str | None = None,
    loss: str | None = None,
    fit_shape: bool | None = None,
    fit_neck: bool | None = None,
    mesh: bool = True,
    overlay: bool = True,
    photometric: bool = False,
    same_person: bool = False,
    landmarks: str | None = None,
    landmark_embedding: str | None = None,
    face: str | None = None,
    all_faces: bool = False,
    verbose: bool = False,
    config=None,
) -> int:
    """Fit every image, write its outputs into ``out_dir``; return the number of failures.

    ``config``: a :class:`flame_tracker.config.Config` (its ``image`` and ``stage1`` settings, and the
    ``stage2`` and ``photometric`` settings that were set explicitly, apply); ``image_fov``,
    ``landmarks``, ``landmark_embedding``, ``face`` (``[image]``), ``fov`` (the reference's FOV over
    the fitting crop, which replaces ``image_fov``), ``solver``, ``loss``, ``fit_shape``,
    ``fit_neck`` (``[stage2]``) override it when given. ``shape_components`` / ``expr_components``:
    fit with the model's first N components. The settings used go to ``out_dir/flame_tracker_config.json``.
    Each failure prints one ``error:`` line naming the image and the reason; the others are still processed.
    """
    from dataclasses import replace

    from flame_tracker.config import Config
    from flame_tracker.fitting.stage2 import with_model_priors
    from flame_tracker.tracker import Tracker
    from flame_tracker.video.store import MANIFEST

    if (Path(out_dir) / MANIFEST).is_file():  # (an export would then see the run and ignore the photos)
        raise click.ClickException(f"{out_dir} holds a video run ({MANIFEST}); write photo results to another "
                                   "--out folder")
    config = config or Config()
    given = {k: v for k, v in (("solver", solver), ("loss", loss), ("fit_shape", fit_shape), ("fit_neck", fit_neck))
             if v is not None}
    config = set_values(config, "stage2", given)
    image_set = {k: v for k, v in (("image_fov", image_fov), ("landmarks", landmarks),
                                   ("landmark_embedding", landmark_embedding), ("face", face)) if v is not None}
    if fov is not None:  # over the fitting crop, the reference: replaces the image-level FOV
        image_set.update(fov=fov, image_fov="none", principal_point="crop")
    config = set_values(config, "image", image_set)

    head: object = model
    if shape_components or expr_components:
        head = load_head_model(model, shape_components, expr_components)
    try:
        tracker = Tracker(head, device, landmarker=landmarker, options=config.image, verbose=verbose)
    except (OSError, ValueError) as exc:
        # the message names the problem: a model file, an option, or a missing embedding
        raise click.ClickException(f"cannot set up the tracker: {exc}") from exc
    # the model's default stage-2 options (blendshape priors for ICT) with what the config and the
    # command set; shape, neck and the rigid refinement are fitted by the LM solver only
    stage2 = with_model_priors(replace(tracker.stage2, **config.set_in("stage2")), tracker.model)
    if stage2.solver != "lm":
        stage2 = replace(stage2, fit_shape=False, fit_neck=False, fit_rigid=False)
    tracker.stage1, tracker.stage2 = config.stage1, stage2
    photometric_set = config.set_in("photometric")
    # as used: the expression prior's centre the tracker chose for this model (None = model's)
    used = replace(tracker.settings(), photometric=config.photometric)
    settings = used.to_json(("image", "stage1", "stage2", "photometric"))
    names = _stems(images, Path(out_dir))
    changed = _changed_settings(Path(out_dir), settings, names)
    if changed:  # other photos there keep theirs: the folder's file describes the last run
        click.echo(f"note: {out_dir} holds photos fitted with other settings ({'; '.join(changed[:4])}"
                   f"{'; ...' if len(changed) > 4 else ''}); {CONFIG_NAME} now holds this run's, and each photo's "
                   "own are in its .json ('settings')", err=True)
    try:
        used.save(Path(out_dir) / CONFIG_NAME, ("image", "stage1", "stage2", "photometric"))
    except OSError as exc:
        raise click.ClickException(f"cannot write to {out_dir}: {exc}") from exc
    failures = 0
    with tracker:
        try:
            tracker.landmarker  # noqa: B018  (fail once, clearly, when the detector is missing)
        except Exception as exc:  # noqa: BLE001
            raise click.ClickException(f"cannot start the face landmarker: {exc}") from exc
        joint: dict[Path, Result] = {}
        if same_person:  # one identity from every usable photo; the others are reported and left out
            errors: dict[int, Exception] = {}
            try:
                fitted = tracker.fit_same_person(images, errors=errors)
            except Exception as exc:  # noqa: BLE001
                click.echo(f"error: --same-person: {first_line(exc)}", err=True)
                return len(images)
            joint = dict(zip([p for i, p in enumerate(images) if i not in errors], fitted))
            for i, err in errors.items():
                click.echo(f"error: {_located(images[i], err)}", err=True)
            failures = len(errors)
        for path, stem in zip(images, names):
            if same_person and path not in joint:
                continue  # reported above
            try:
                if same_person:
                    results = [joint[path]]
                    from flame_tracker.io.images import load_image

                    tracker.last_image = load_image(path)
                else:
                    results = tracker.fit_image_faces(path) if all_faces else [tracker.fit_image(path)]
                    if not all_faces and tracker.last_faces > 1:
                        click.echo(f"note: {path}: {tracker.last_faces} faces found, one fitted (--face "
                                   f"{tracker.face}); --face chooses another, --all-faces fits each", err=True)
                image = tracker.last_image
                assert image is not None  # the photo just fitted
                for k, result in enumerate(results):
                    name = f"{stem}_face{k}" if all_faces else stem
                    if photometric:  # refine against the photo's colours (fitting.photometric)
                        from flame_tracker.fitting.photometric import refine_result, save_texture_png

                        result, ph = refine_result(tracker.fit_model, result, image,
                                                   output_model=tracker.model, **photometric_set)
                    result.settings = settings
                    result.save(out_dir, name, image=tracker.last_image, mesh=mesh, overlay=overlay)
                    if photometric:
                        save_texture_png(out_dir / f"{name}_texture.png", ph.albedo, tracker.model)
                    t = result.timings
                    click.echo(
                        f"{path} -> {out_dir / name}.npz  reproj {result.reprojection_error_px:.2f} px  "
                        f"(detect {t.get('detect', 0):.2f}s, stage1 {t['stage1']:.2f}s, "
                        f"stage2 {t['stage2']:.2f}s, write {t.get('write', 0):.2f}s)"
                    )
            except Exception as exc:  # noqa: BLE001  (one bad image must not stop the batch)
                failures += 1
                click.echo(f"error: {_located(path, exc)}", err=True)
                continue
    return failures


def _located(path: Path, exc: Exception) -> str:
    """``<path>: <message>``, without repeating the path when the message already names it."""
    msg = first_line(exc)
    return msg if str(path) in msg else f"{path}: {msg}"


@click.command("image")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("flame_tracker_out"), show_default=True, help="Folder for the outputs; created if missing.")
@click.option("--model", "-m", default=None,
              help="Head model: a FLAME .pkl (2020/2023), an ICT-FaceKit .npz or FaceXModel/ folder, or a "
              "cached .npz. Default: the open ICT-FaceKit model from the data folder (FLAME_TRACKER_DATA).")
@component_options
@click.option("--device", default=None, help="Torch device, e.g. cpu or cuda. Default: CUDA when available, else CPU.")
@click.option("--landmarker", default=None, type=click.Path(dir_okay=False),
              help="MediaPipe face_landmarker.task. Default: $FLAME_TRACKER_FACE_LANDMARKER, the data folder, "
              "or the user cache (see `flame-tracker assets`).")
@click.option("--image-fov", default=IMAGE_FOV, show_default=True, type=Number(1.0, 150.0),
              help="Camera field of view in degrees over the image's longer side (one photo cannot identify "
              "it; the camera's principal point is the image centre).")
@click.option("--fov", default=None, type=Number(10.0, 50.0),
              help="Instead of --image-fov: the reference's FOV in degrees over the fitting crop (e.g. 20).")
@click.option("--solver", type=click.Choice(["lm", "adam"]), default="lm", show_default=True,
              help="Stage-2 solver: lm (fast Levenberg-Marquardt, fits shape too) or adam (the reference's "
              "200-iteration schedule; expression, jaw and eyes only).")
@click.option("--loss", type=click.Choice(["l1", "huber"]), default="l1", show_default=True,
              help="Landmark loss of stage 2: l1 (the reference) or huber (smooth near zero).")
@click.option("--shape/--no-shape", "fit_shape", default=True, show_default=True,
              help="Fit the identity shape from the landmarks (with --no-shape the mean identity is kept).")
@click.option("--neck/--no-neck", "fit_neck", default=False, show_default=True,
              help="Also fit the neck rotation (regularised).")
@click.option("--mesh/--no-mesh", default=True, show_default=True, help="Write the fitted mesh as OBJ and PLY.")
@click.option("--overlay/--no-overlay", default=True, show_default=True,
              help="Write <name>_overlay.png: the shaded mesh over the photo with detected (green) and fitted "
              "(red) landmarks.")
@click.option("--photometric/--no-photometric", default=False, show_default=True,
              help="Refine camera, expression and eyes against the photo's colours (SH-lit albedo render, "
              "reference loss weights; about 1 s per image) and write <name>_texture.png.")
@click.option("--same-person", is_flag=True, default=False,
              help="The photos show one person: fit one identity shape jointly from all of them (each photo "
              "keeps its own camera and expression). More photos give a better shape. A photo that cannot be "
              "read or has no face is reported and left out.")
@click.option("--landmarks", type=click.Choice(["68", "dense"]), default="68", show_default=True,
              help="Points stage 2 fits: the 68 iBUG points, or MediaPipe's dense 468-point mesh weighted by how "
              "consistently the detector places each point (needs the model's detector embedding).")
@click.option("--landmark-embedding", type=click.Choice(["detector", "views", "model"]), default="detector",
              show_default=True,
              help="Where the fitted points sit on the model: where the detector puts them (derived by rendering, "
              "`flame-tracker embed`), the same with the face outline sliding with the head's yaw (views), or the "
              "model's own 68 points (model, the reference).")
@click.option("--mesh-depth", type=Number(0.0, 1.0), default=0.5, show_default=True,
              help="How far each head's rotation is turned from the landmark fit's towards the rotation of "
              "MediaPipe's 3-D face mesh (its depth tells the head's pitch better than its 2-D points; full up "
              "to 45° of yaw, none from 60°). 0: the landmark fit alone (the reference).")
@click.option("--face", default="largest", show_default=True,
              help="Which face to fit when a photo has several: largest, center, left, right, 'index N' (counted "
              "from the left, from 0) or 'near X,Y' (pixels). Small faces in wide shots are searched for too.")
@click.option("--all-faces", is_flag=True, help="Fit every face of each photo: <name>_face0.*, <name>_face1.*, ... "
              "(left to right).")
@click.option("--verbose", is_flag=True, help="Show MediaPipe's own log lines.")
@config_option
@click.pass_context
def image(ctx: click.Context, images: tuple[Path, ...], out_dir: Path, model: str | None,
          shape_components: int | None, expr_components: int | None, device: str | None,
          landmarker: str | None, image_fov: float, fov: float | None, solver: str, loss: str, fit_shape: bool,
          fit_neck: bool, mesh: bool, overlay: bool, photometric: bool, same_person: bool, landmarks: str,
          landmark_embedding: str, mesh_depth: float, face: str, all_faces: bool, verbose: bool,
          config_path: Path | None) -> None:
    """Fit the head model to each IMAGE and write, per image, into --out:

    \b
      <name>.npz          parameters with the reference keys + cameras in original pixels
      <name>.obj / .ply   the fitted mesh (model space, metres)
      <name>_overlay.png  mesh and landmarks over the photo
      <name>.json         summary: camera, reprojection error, timings
      (with --all-faces: <name>_face0.*, <name>_face1.*, ... from left to right)

    A folder argument is expanded to the images it contains (not those in its subfolders). An image
    that cannot be read or has no face prints one error line; the others are still processed and the
    exit code is 1.
    """
    paths: list[Path] = []
    for p in images:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES)
            if not found:  # said, not skipped silently (subfolders are not searched)
                sub = " (its subfolders are not searched)" if any(q.is_dir() for q in p.iterdir()) else ""
                click.echo(f"warning: {p}: no images in this folder{sub}", err=True)
            paths.extend(found)
        else:
            paths.append(p)
    if not paths:
        raise click.ClickException("no images found in the given folder(s)")
    check_one_fov(ctx)
    if all_faces and same_person:
        raise click.BadParameter("--all-faces fits every face separately; --same-person fits one person: "
                                 "use one of them", param_hint="--all-faces")
    from flame_tracker.detection.search import FaceChoice

    try:
        FaceChoice.parse(face)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--face") from exc
    config = with_given(ctx, load_config(config_path), "stage2",
                        {"solver": "solver", "loss": "loss", "fit_shape": "fit_shape", "fit_neck": "fit_neck"},
                        {"solver": solver, "loss": loss, "fit_shape": fit_shape, "fit_neck": fit_neck})
    config = with_given(ctx, config, "image",
                        {k: k for k in ("image_fov", "landmarks", "landmark_embedding", "mesh_depth", "face")},
                        {"image_fov": image_fov, "landmarks": landmarks, "landmark_embedding": landmark_embedding,
                         "mesh_depth": mesh_depth, "face": face})
    failures = run_images(paths, out_dir, model=model, shape_components=shape_components,
                          expr_components=expr_components, device=device, landmarker=landmarker, fov=fov, config=config,
                          mesh=mesh, overlay=overlay, photometric=photometric, same_person=same_person,
                          all_faces=all_faces, verbose=verbose)
    click.echo(f"{len(paths) - failures}/{len(paths)} image(s) fitted -> {out_dir}")
    if failures:
        sys.exit(1)
