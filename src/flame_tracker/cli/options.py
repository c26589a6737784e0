"""Command-line pieces shared by the commands: ``--config`` and which options were given."""

from __future__ import annotations

from pathlib import Path

import click


def config_option(f):
    """``--config FILE``: a TOML file of settings (see ``flame-tracker config``)."""
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="TOML file with any setting of the run (`flame-tracker config` prints them all with "
                        "their defaults); options given on the command line win over it.")(f)


def component_options(f):
    """``--shape-components`` / ``--expr-components``: fit with the model's first N components (what
    an export format takes, e.g. IMavatar's 100 / 50 of FLAME 2020)."""
    f = click.option("--expr-components", type=click.IntRange(1, None), default=None,
                     help="Use only the first N expression components (e.g. 50 for the IMavatar export).")(f)
    return click.option("--shape-components", type=click.IntRange(1, None), default=None,
                        help="Use only the first N identity components of the model (e.g. 100 for the IMavatar "
                        "export).")(f)


def load_head_model(path, shape_components: int | None = None, expr_components: int | None = None):
    """:func:`flame_tracker.model.load_model` with the component options; a bad file is one error line."""
    from flame_tracker.model import load_model

    try:
        return load_model(path, n_shape=shape_components, n_expr=expr_components)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load the head model: {exc}") from exc


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not left at its default)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def check_one_fov(ctx: click.Context) -> None:
    """``--fov`` (the reference's FOV over the fitting crop) replaces ``--image-fov`` (over the
    image): both on one command line is a usage error, not one silently ignored."""
    if given(ctx, "fov") and given(ctx, "image_fov"):
        raise click.BadParameter("--fov (over the fitting crop, the reference's camera) replaces --image-fov "
                                 "(over the image's longer side): give one of them", param_hint="--fov")


def load_config(config_path: Path | None):
    """The file's :class:`~flame_tracker.config.Config` (defaults without one); a bad file is a
    click error naming the setting."""
    from flame_tracker.config import Config, ConfigError

    try:
        return Config.load(config_path) if config_path is not None else Config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def set_values(config, section: str, values: dict):
    """``config`` with the command line's ``values`` (setting of ``section`` -> value); a bad value is
    a click error naming the setting."""
    from flame_tracker.config import ConfigError

    try:
        return config.with_values(section, values, "command line")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def with_given(ctx: click.Context, config, section: str, mapping: dict[str, str], values: dict):
    """``config`` with the options of ``mapping`` (option name -> setting of ``section``) that were
    given on the command line."""
    return set_values(config, section, {key: values[opt] for opt, key in mapping.items() if given(ctx, opt)})


def check_output_folder(folder: Path, option: str = "--out") -> None:
    """Fail now, in one line, when results cannot be written into ``folder`` (a file in the way, no
    permission), instead of with a traceback once the work is done: a file is written and removed
    in ``folder`` if it exists, else in its nearest existing parent (nothing is created)."""
    import tempfile

    folder = Path(folder)
    probe = folder
    try:  # (exists() raises, not returns False, where a parent folder may not be searched)
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        is_dir = probe.is_dir()
        if is_dir:
            with tempfile.TemporaryFile(dir=probe):
                pass
    except OSError as exc:
        raise click.ClickException(f"cannot write to {folder}: {exc.strerror or exc} in {probe}") from exc
    if not is_dir:
        raise click.BadParameter(f"{probe} is a file, not a folder: give a folder for the results",
                                 param_hint=option)


def os_error_message(exc: OSError) -> str:
    """An operating-system error (a full disk, a folder made read-only while running) as one line:
    what went wrong and on which file, without Python's class name."""
    name = exc.filename if exc.filename is not None else ""
    return f"{exc.strerror or exc}: {name}" if name else str(exc.strerror or exc)


class Number(click.FloatRange):
    """A float option that refuses NaN (which passes every range check, and was then ignored or
    failed only after the detection): ``click.FloatRange``'s arguments; none for any other number."""

    name = "number"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        out = super().convert(value, param, ctx)
        if out != out:
            self.fail("NaN is not a value", param, ctx)
        return out

    def _describe_range(self) -> str:  # (no bounds: nothing to show in --help)
        return "" if self.min is None and self.max is None else super()._describe_range()
