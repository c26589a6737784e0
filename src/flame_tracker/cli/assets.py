"""``flame-tracker assets``: download and locate model files."""

from __future__ import annotations

import click

from flame_tracker.assets import ASSETS, AssetError, download_asset, face_landmarker_path


@click.group("assets")
def assets() -> None:
    """Download or locate the model files flame-tracker needs."""


@assets.command("download")
@click.option("--dest", type=click.Path(dir_okay=False), default=None,
              help="Where to save the file (default: the user cache, see FLAME_TRACKER_CACHE).")
@click.option("--url", default=None, help="Download from this URL instead of the official one "
              "(a mirror); the SHA-256 is still checked.")
@click.option("--force", is_flag=True, help="Download again even if a valid file is present.")
def download(dest: str | None, url: str | None, force: bool) -> None:
    """Fetch the MediaPipe Face Landmarker bundle (Apache-2.0) and verify its checksum."""
    asset = ASSETS["face_landmarker"]
    try:
        path = download_asset(asset, dest, url=url, force=force)
    except AssetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{asset.filename} ({asset.licence}) -> {path}")


@assets.command("where")
def where() -> None:
    """Print the Face Landmarker bundle that would be used, or why none is found."""
    try:
        click.echo(str(face_landmarker_path()))
    except AssetError as exc:
        raise click.ClickException(str(exc)) from exc
