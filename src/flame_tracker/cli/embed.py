"""``flame-tracker embed``: derive where the landmark detector puts its points on a head model."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("embed")
@click.option("--model", "-m", "model_path", default=None,
              help="Head model: a FLAME .pkl, an ICT-FaceKit .npz or FaceXModel/ folder. Default: the open "
              "ICT-FaceKit model (for which the embedding is shipped already).")
@click.option("--renders", type=click.IntRange(8, 2000), default=240, show_default=True,
              help="Synthetic renders of the model to detect on (more: a steadier median).")
@click.option("--seed", type=int, default=7001, show_default=True, help="Seed of the renders.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the embedding here too (npz). It is always stored in the user cache, where "
              "`flame-tracker image` and `video` find it for this model.")
@click.option("--landmarker", default=None, type=click.Path(dir_okay=False),
              help="MediaPipe face_landmarker.task (default: the data folder or the user cache).")
def embed(model_path: str | None, renders: int, seed: int, out: Path | None, landmarker: str | None) -> None:
    """Render the model under many identities, expressions, views and lights, run the landmark
    detector on each picture, send every detected point (MediaPipe's 478 and the 68 iBUG points)
    back onto the visible surface, and store per-point medians (a static embedding and one per 10°
    of head yaw) as the model's detector embedding, used for fitting from then on, in place of one
    shipped for the model (about 0.8 s per render on an idle core)."""
    from flame_tracker.cli.options import load_head_model
    from flame_tracker.detection import FaceLandmarker
    from flame_tracker.model.embedding import cached_path, derive_detector_embedding, describe, shipped_embedding

    model = load_head_model(model_path)
    try:
        with FaceLandmarker(landmarker, mode="image") as lm:
            emb = derive_detector_embedding(model, lm, n_renders=renders, seed=seed, progress=True)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    cached = emb.save(cached_path(model))
    click.echo(f"detector embedding of {model.name} -> {cached}  {describe(emb)}")
    shipped = shipped_embedding(model)
    if shipped is not None:  # (a quick embedding from few renders would otherwise replace it unnoticed)
        click.echo(f"it replaces the embedding shipped for {model.name} ({shipped.renders} renders) in every fit "
                   f"from now on; delete {cached} to go back to the shipped one")
    if out is not None:
        click.echo(f"also written to {emb.save(out)}")
