"""Exports of tracked runs: ARKit / Live Link Face CSV (:mod:`.arkit`) and glTF (:mod:`.gltf`) for
animation tools; for avatar trainers the VHAP layout GaussianAvatars trains on
(:mod:`.gaussian_avatars`), the IMavatar family's ``flame_params.json`` (:mod:`.imavatar`), INSTA's
(:mod:`.insta`) and NeRSemble's benchmark layout (:mod:`.nersemble`); all read from a finished
``flame-tracker video`` folder or a folder of ``flame-tracker image`` results (:mod:`.run`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_tracker.export.run import FLAME_FORMATS, ExportError, TrackedRun, load_run, one_identity

FORMATS = ("arkit-csv", "gltf", "gaussian-avatars", "imavatar", "insta", "nersemble")


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None, model=None,
               video: str | Path | None = None, masks: str | Path | None = None) -> list[Path]:
    """Export the finished run in ``run_dir`` as ``fmt`` (:data:`FORMATS`) into ``out_dir`` (default
    ``run_dir/export-<fmt>``); ``model``: the head model (or its path) the run was tracked with
    (default: the open ICT model); ``video``: the source video (default: the run's) or, for photo
    results, the folder holding the photos (default: where they were fitted); ``masks``
    (GaussianAvatars): ``"model"`` or a folder of mattes. ``run_dir`` may also be a folder of
    ``flame-tracker image`` results: one frame per photo, brought to one shared camera; formats of
    one subject need one identity (``--same-person``). Returns the files written;
    :class:`ExportError` says why not."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if masks is not None and fmt != "gaussian-avatars":  # (it would be ignored)
        raise ExportError(f"--masks is for gaussian-avatars (its fg_masks/); {fmt} takes none")
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / f"export-{fmt}"
    from flame_tracker.export.multiview import is_multiview_run

    if is_multiview_run(run_dir):
        return [_export_multiview(run_dir, fmt, out_dir, model, video, masks)]
    tracked = load_run(run_dir)
    if fmt != "arkit-csv" and tracked.images:
        one_identity(tracked, fmt)
    if fmt == "arkit-csv":
        from flame_tracker.export.arkit import export_arkit

        rest = _eye_rest(tracked, model)
        return _in_folder(out_dir, fmt, lambda tmp: export_arkit(tracked, tmp, rest),
                          legacy=("arkit_fitted.csv", "arkit_mediapipe.csv"))
    from flame_tracker.model import HeadModel, load_model

    if not isinstance(model, HeadModel):
        n_shape, n_expr = int(tracked.arrays["shape"].shape[-1]), int(tracked.arrays["exp"].shape[-1])
        try:  # with the run's number of components (it may have used fewer, e.g. 100/50 for IMavatar)
            try:
                model = load_model(model, n_shape=n_shape, n_expr=n_expr)
            except ValueError:  # a model with fewer: not the run's, which the format's check says
                model = load_model(model)
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot load the head model: {exc}") from exc
    if fmt == "gltf":
        from flame_tracker.export.gltf import export_gltf

        return _in_folder(out_dir, fmt, lambda tmp: [export_gltf(tracked, model, tmp / "run.glb")], legacy=("run.glb",))
    if fmt == "imavatar":
        from flame_tracker.export.imavatar import export_imavatar

        return [export_imavatar(tracked, model, out_dir, video)]
    if fmt == "insta":
        from flame_tracker.export.insta import export_insta

        return [export_insta(tracked, model, out_dir, video)]
    if fmt == "nersemble":
        from flame_tracker.export.nersemble import export_nersemble

        return [export_nersemble(tracked, model, out_dir, video)]
    from flame_tracker.export.gaussian_avatars import export_gaussian_avatars

    return [export_gaussian_avatars(tracked, model, out_dir, video, masks)]


def _eye_rest(tracked: TrackedRun, model) -> np.ndarray | None:
    """The rest gaze of the model ``tracked`` was fitted with (``model``, its path, or the default
    model when that is the run's), for eye angles relative to straight ahead; None (with a warning)
    when that model is not at hand: the CSV then has ``eye_pose``'s own angles."""
    import warnings

    from flame_tracker.model import HeadModel, load_model

    try:
        loaded = model if isinstance(model, HeadModel) else load_model(model)
    except (OSError, ValueError):
        loaded = None
    from flame_tracker.export.run import tracked_with

    if loaded is None or not tracked_with(tracked, loaded):
        warnings.warn(f"{tracked.folder}: the run's model {tracked.model_name!r} is not at hand (pass --model): "
                      "the eye angles in the CSV are its eye_pose, relative to that model's rest gaze", stacklevel=3)
        return None
    return loaded.eye_rest_rotvec()


def check_export_model(fmt: str, model) -> None:
    """Raise :class:`ExportError` when a run tracked with ``model`` (a ``HeadModel``) could not be
    exported as ``fmt``: lets ``flame-tracker video --export`` say so before tracking."""
    from flame_tracker.export.run import check_flame_model

    if fmt in FLAME_FORMATS:
        check_flame_model(model, *FLAME_FORMATS[fmt])


def _in_folder(out_dir: Path, fmt: str, write, legacy: tuple[str, ...] = ()) -> list[Path]:
    """The files ``write(folder) -> [paths]`` writes, put at ``out_dir`` like every folder format
    (:func:`~flame_tracker.export.run.write_folder`: a folder holding other files is refused, an
    earlier export of ours in this format replaced; ``legacy``: the names an earlier version wrote
    there without marking the folder)."""
    from flame_tracker.export.run import write_folder

    names: list[str] = []
    folder = write_folder(out_dir, fmt, lambda tmp: names.extend(p.name for p in write(tmp)), legacy)
    return [folder / n for n in names]


def _export_multiview(run_dir, fmt: str, out_dir: Path, model, capture, masks) -> Path:
    """A ``flame-tracker multiview`` run: GaussianAvatars' multi-camera layout."""
    from flame_tracker.export.multiview import export_multiview_gaussian_avatars, load_multiview_run
    from flame_tracker.model import HeadModel, load_model

    if fmt != "gaussian-avatars":
        raise ExportError(f"a multi-view run exports as gaussian-avatars (every camera); {fmt} takes one camera")
    run = load_multiview_run(run_dir)
    if not isinstance(model, HeadModel):
        try:
            model = load_model(model, n_shape=int(run.arrays["shape"].shape[-1]),
                               n_expr=int(run.arrays["exp"].shape[-1]))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot load the head model: {exc}") from exc
    return export_multiview_gaussian_avatars(run, model, out_dir, capture, masks)


__all__ = ["FORMATS", "ExportError", "TrackedRun", "export_run", "load_run"]
