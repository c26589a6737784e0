"""``flame-tracker demo``: the whole single-image pipeline on a sample image from the data folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEMO_IMAGE = "woman.jpg"  # a frontal adult face the model fits well (3.2 px); the other samples: --image


@click.command("demo")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("flame_tracker_demo"), show_default=True, help="Folder for the outputs.")
@click.option("--image", "image_name", default=DEMO_IMAGE, show_default=True,
              help="Sample image inside <data folder>/images (the data folder is $FLAME_TRACKER_DATA, "
              "default ../shared next to the checkout).")
def demo(out_dir: Path, image_name: str) -> None:
    """Fit the open ICT-FaceKit head model to a sample photo and write npz, OBJ, PLY, overlay PNG and JSON."""
    from flame_tracker.cli.image import run_images
    from flame_tracker.paths import data_dir, data_file

    try:
        path = data_file("images", image_name)
    except FileNotFoundError as exc:
        folder = data_dir() / "images"
        if folder.is_dir():  # the data folder is there: only the name is wrong
            names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            raise click.ClickException(f"no image {image_name!r} in {folder}; sample images there: "
                                       f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}") from exc
        raise click.ClickException(str(exc)) from exc
    failures = run_images([Path(path)], out_dir)
    if failures:
        sys.exit(1)
    click.echo(f"demo outputs in {out_dir.resolve()} (open {Path(path).stem}_overlay.png)")
