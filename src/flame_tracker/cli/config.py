"""``flame-tracker config``: every setting with its default, or a configuration file checked."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("config")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def config(file: Path | None) -> None:
    """Print every setting of a run as TOML: the defaults (commented out), or FILE's settings over
    them (FILE is checked: an unknown setting or a wrong type is an error naming it). Save the
    output, uncomment and edit what you change, and pass it to `image`, `video` or `multiview` with
    --config FILE."""
    from flame_tracker.cli.options import load_config

    click.echo(load_config(file).to_toml(), nl=False)
