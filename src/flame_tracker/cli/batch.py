"""``flame-tracker batch INPUTS... --out DIR``: many videos and photos on Ray (local or a cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("batch")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: one folder per item, plus batch.json and batch.csv.")
@click.option("--workers", type=click.IntRange(1, None), default=None,
              help="Parallel workers of the local Ray (default: the number of cores).")
@click.option("--address", default=None,
              help="Join a Ray cluster instead of starting a local one: 'auto' (this node belongs to one) or "
              "'ray://HOST:10001'.")
@click.option("--photos-per-task", type=click.IntRange(1, None), default=16, show_default=True,
              help="Photos fitted per task (one model load each).")
@click.option("--retries", type=click.IntRange(0, None), default=2, show_default=True,
              help="Times a task is retried when its worker dies (a failing item is not retried).")
@click.option("--force", is_flag=True, help="Redo items that are already done.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--verbose", is_flag=True, help="Show the workers' logs.")
def batch(inputs: tuple[str, ...], out_dir: Path, workers: int | None, address: str | None, photos_per_task: int,
          retries: int, force: bool, quiet: bool, verbose: bool) -> None:
    """Track every video and fit every photo of INPUTS into --out DIR, on Ray.

    INPUTS are video and image files, folders, glob patterns ('clips/**/*.mp4') or manifests: a CSV
    with a 'path' column or a JSON-lines file of objects with 'path', and optionally per item 'name',
    'start', 'end', 'fps', 'every', 'max_frames', 'model', 'face'. One task per video, photos in groups.
    Finished items are skipped when the command is run again, unfinished videos resume. A failing
    item is reported and the others go on; the exit code is 0 only when every item succeeded.
    """
    from flame_tracker.batch import BatchInputError, RayMissingError, collect_items, run_batch

    try:
        items = collect_items(list(inputs), out_dir)
    except BatchInputError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        summary = run_batch(items, out_dir, workers=workers, address=address, photos_per_task=photos_per_task,
                            retries=retries, force=force, progress=not quiet, verbose=verbose)
    except RayMissingError as exc:
        raise click.ClickException(str(exc)) from exc
    except ConnectionError as exc:
        raise click.ClickException(f"cannot reach the Ray cluster at {address}: {exc}") from exc
    click.echo(summary.text())
    if summary.interrupted:
        click.echo(f"interrupted: finished items are kept in {out_dir}; run the same command again to do the rest",
                   err=True)
        sys.exit(130)
    if not summary.ok:
        sys.exit(1)
