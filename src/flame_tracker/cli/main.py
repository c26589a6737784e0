"""Command-line interface: ``flame-tracker <command>``. Each sub-command lives in its own module
of this package and is registered on the ``main`` group here."""

from __future__ import annotations

import click

from flame_tracker import __version__


class _Commands(click.Group):
    """The command group; Ctrl-C anywhere (loading a model, exporting, fitting a photo) exits with
    code 130, as a shell reports it, instead of click's "Aborted!" and code 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from flame_tracker.detection.landmarker import restore_stderr

            restore_stderr()  # a detection thread may have had MediaPipe's log silenced
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flame-tracker")
def main() -> None:
    """Fit the FLAME (or the open ICT-FaceKit) 3D head model to face images and videos, on a CPU.

    Run `flame-tracker COMMAND --help` for the options of a command.
    """


from flame_tracker.cli.assets import assets as _assets  # noqa: E402

main.add_command(_assets)
from flame_tracker.cli.image import image as _image  # noqa: E402

main.add_command(_image)
from flame_tracker.cli.demo import demo as _demo  # noqa: E402

main.add_command(_demo)
from flame_tracker.cli.video import video as _video  # noqa: E402

main.add_command(_video)
from flame_tracker.cli.embed import embed as _embed  # noqa: E402

main.add_command(_embed)
from flame_tracker.cli.export import export as _export  # noqa: E402

main.add_command(_export)
from flame_tracker.cli.batch import batch as _batch  # noqa: E402

main.add_command(_batch)
from flame_tracker.cli.multiview import multiview as _multiview  # noqa: E402

main.add_command(_multiview)
from flame_tracker.cli.config import config as _config  # noqa: E402

main.add_command(_config)


if __name__ == "__main__":  # pragma: no cover
    main()
