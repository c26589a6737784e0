"""One configuration tree: every setting of a run, with its default, in one place.

The tree's sections are the option classes the code already takes (each keeps its defaults, the
reference's values where the reference has one):

================  ==================================================  ==========================
section           class                                               used by
================  ==================================================  ==========================
``image``         :class:`~flame_tracker.tracker.ImageOptions` (camera: FOV over the  ``image``
                  picture, principal point; points fitted; rounds; which face)
``stage1``        :class:`~flame_tracker.fitting.stage1.Stage1Options`  ``image``
                  (the reference's weights 300 / 200, ear gating, solver)
``stage2``        :class:`~flame_tracker.fitting.stage2.Stage2Options`  ``image``
                  (single photos: the jawline at 200, the identity prior 0.3, blendshape
                  sparsity 2.0, ``tracker.DEFAULT_STAGE2``, ``tracker.PHOTO_EXPR_SPARSITY``)
``track``         :class:`~flame_tracker.video.track.TrackOptions`       ``video``
``track.stage1``  the video's stage 1 (:data:`~flame_tracker.video.track.VIDEO_STAGE1`:
                  the reference's weights, 20 iterations per frame)      ``video``
``track.stage2``  the video's stage 2 (:data:`~flame_tracker.video.track.VIDEO_STAGE2`:
                  no jawline term, shape prior 0.1, 6 iterations)        ``video``
``video``         :class:`~flame_tracker.video.pipeline.VideoOptions`    ``video``
``flow``          :class:`~flame_tracker.video.flow.FlowOptions`         ``video``
``photometric``   :class:`~flame_tracker.fitting.photometric.PhotometricOptions`
                                                                      ``image`` / ``video``
``multiview``     :class:`~flame_tracker.multiview.fit.MultiviewOptions`  ``multiview``
================  ==================================================  ==========================

A TOML file sets any of them (``--config run.toml``; ``flame-tracker config`` prints the defaults);
a command-line option given explicitly wins over the file. Every run writes the sections its command
uses to its output folder (``config.json``; ``flame_tracker_config.json`` beside photo results), with
the values it used (a setting left to the model, such as ``stage2.w_exp``, recorded as resolved).
One name per idea across sections: ``w_lmk`` (face landmarks), ``w_contour`` (jawline), ``w_exp``
(expression prior), ``w_shape``, ``w_temporal``, ``max_iter``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flame_tracker.errors import FlameTrackerError


class ConfigError(FlameTrackerError, ValueError):
    """A configuration file or value that cannot be used (the message names the key and the fix)."""


def _sections() -> dict[str, type]:
    from flame_tracker.fitting.photometric import PhotometricOptions
    from flame_tracker.fitting.stage1 import Stage1Options
    from flame_tracker.fitting.stage2 import Stage2Options
    from flame_tracker.multiview.fit import MultiviewOptions
    from flame_tracker.tracker import ImageOptions
    from flame_tracker.video.flow import FlowOptions
    from flame_tracker.video.pipeline import VideoOptions
    from flame_tracker.video.track import TrackOptions

    return {"image": ImageOptions, "stage1": Stage1Options, "stage2": Stage2Options, "track": TrackOptions,
            "video": VideoOptions, "flow": FlowOptions, "photometric": PhotometricOptions,
            "multiview": MultiviewOptions}


def _default(section: str):
    if section == "stage2":
        from flame_tracker.tracker import DEFAULT_STAGE2

        return DEFAULT_STAGE2
    return _sections()[section]()


@dataclass(frozen=True)
class Config:
    """Every section of the tree (see the module docstring); ``Config()`` is all defaults."""

    image: Any = field(default_factory=lambda: _default("image"))
    stage1: Any = field(default_factory=lambda: _default("stage1"))
    stage2: Any = field(default_factory=lambda: _default("stage2"))
    track: Any = field(default_factory=lambda: _default("track"))
    video: Any = field(default_factory=lambda: _default("video"))
    flow: Any = field(default_factory=lambda: _default("flow"))
    photometric: Any = field(default_factory=lambda: _default("photometric"))
    multiview: Any = field(default_factory=lambda: _default("multiview"))
    # "section.key" of every setting a file or the command line set (the rest are defaults; a
    # model-dependent default, such as the blendshape priors of stage 2, is kept unless set)
    explicit: frozenset = field(default=frozenset(), compare=False)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | Path) -> Config:
        """A TOML file's settings over the defaults (:class:`ConfigError` for unknown keys or bad values)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable TOML file ({exc})") from exc
        return cls().updated(doc, where=str(path))

    def updated(self, doc: dict[str, Any], where: str = "config") -> Config:
        """A copy with ``doc`` (``{section: {key: value}}``, as read from TOML or JSON) applied."""
        sections = _sections()
        out = self
        for name, values in doc.items():
            if name not in sections:
                raise ConfigError(f"{where}: unknown section [{name}]; sections: {', '.join(sections)}")
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: [{name}] must be a table of settings")
            out = out.with_values(name, values, where)
        return out

    def with_values(self, section: str, values: dict[str, Any], where: str = "config") -> Config:
        """A copy with ``values`` set in ``section`` (each checked against the field's type; a nested
        section such as ``track.stage2`` takes a table)."""
        updated, keys = _apply(getattr(self, section), values, where, section)
        return replace(self, **{section: updated}, explicit=self.explicit | keys)

    def set_in(self, section: str) -> dict[str, Any]:
        """The settings of ``section`` a file or the command line set explicitly. One set to
        ``"none"`` where the default is none too is left out: the printed default, uncommented,
        keeps the choice the model or the command makes (e.g. photos' expression sparsity)."""
        current, default = getattr(self, section), _default(section)
        keys = [k.split(".")[1] for k in self.explicit if k.startswith(section + ".") and k.count(".") == 1]
        return {k: getattr(current, k) for k in keys
                if not (getattr(current, k) is None and getattr(default, k, 0) is None)}

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}`` of every setting (None where a setting is unset)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self) if f.name != "explicit"}

    def to_toml(self) -> str:
        """The tree as TOML: the settings set explicitly as values, every other one commented out
        with its default (uncomment what you change: a default left as it is stays the model's or
        the input's own choice, e.g. the ICT blendshape priors); ``"none"`` unsets an optional one."""
        lines: list[str] = ['# flame-tracker settings. Uncomment what you change. "none": left to the command, the',
                            "# model or the input (e.g. the expression priors of the model; see docs/architecture.md).",
                            ""]

        def table(name: str, values: dict[str, Any]) -> None:
            lines.append(f"[{name}]")
            nested = {k: v for k, v in values.items() if isinstance(v, dict)}
            for key, value in values.items():
                if key in nested:
                    continue
                text = '"none"' if value is None else _toml_value(value)
                lines.append(f"{key} = {text}" if f"{name}.{key}" in self.explicit else f"# {key} = {text}")
            lines.append("")
            for key, value in nested.items():
                table(f"{name}.{key}", value)

        for section, values in self.to_dict().items():
            table(section, values)
        return "\n".join(lines)

    def save(self, path: str | Path, sections: tuple[str, ...] | None = None) -> Path:
        """``config.json``: every setting a run used (of ``sections``, the ones its command uses;
        default all)."""
        from flame_tracker.io.results import save_json

        return save_json(path, self.to_json(sections))

    def to_json(self, sections: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
        """What :meth:`save` writes: :meth:`to_dict` of ``sections`` (default all), non-finite
        numbers as strings."""

        def finite(v: Any) -> Any:  # JSON has no infinity: "inf" / "-inf" / "nan", read back by updated()
            if isinstance(v, dict):
                return {k: finite(x) for k, x in v.items()}
            return _toml_value(v) if isinstance(v, float) and not math.isfinite(v) else v

        tree = finite(self.to_dict())
        return tree if sections is None else {k: tree[k] for k in sections}



def _apply(obj: Any, values: dict[str, Any], where: str, prefix: str) -> tuple[Any, frozenset[str]]:
    """``obj`` (an options dataclass) with ``values`` checked and set; returns it with the
    ``prefix.key`` names set (a nested options dataclass takes a table of its own settings)."""
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    checked: dict[str, Any] = {}
    keys: set[str] = set()
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {name}; settings of [{prefix}]: {', '.join(sorted(known))}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{name}] must be a table of settings")
            checked[key], sub = _apply(getattr(obj, key), value, where, name)
            keys |= sub
            continue
        checked[key] = _coerce(value, hints[key], f"{where}: {name}")
        keys.add(name)
        if name in ("video.face", "image.face"):  # one spelling per choice (the run folder keys on it)
            from flame_tracker.detection.search import FaceChoice

            try:
                checked[key] = str(FaceChoice.parse(value))
            except ValueError as exc:
                raise ConfigError(f"{where}: {name}: {exc}") from exc
        if isinstance(checked[key], int) and not isinstance(checked[key], bool) and key in (
                "every", "max_frames", "chunk", "max_iter", "n_keyframes", "rounds") and checked[key] < 1:
            raise ConfigError(f"{where}: {name} must be at least 1, got {checked[key]}")
        _check_range(key, checked[key], f"{where}: {name}")
    out = replace(obj, **checked)
    start, end = getattr(out, "start_s", None), getattr(out, "end_s", None)
    if isinstance(start, float) and isinstance(end, float) and end <= start:
        raise ConfigError(f"{where}: {prefix}.end_s ({end:g}) must be after {prefix}.start_s ({start:g})")
    return out, frozenset(keys)


def _check_range(key: str, value: Any, where: str) -> None:
    """The values a setting can take, by its name: no NaN anywhere (it passes every comparison, so a
    NaN cutoff turned smoothing off and a NaN frame rate was ignored), fields of view in (0, 180)
    degrees, cutoffs, rates and scales above 0 (``inf`` cutoff: no smoothing), weights, learning
    rates and the start time not below 0, a photometric render of at least 16 pixels."""
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_range(key, v, where)
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if value != value:
        raise ConfigError(f"{where}: NaN is not a value")
    if key in ("fov", "image_fov") and not 0 < value < 180:
        raise ConfigError(f"{where}: a field of view in degrees, above 0 and below 180; got {value:g}")
    if (key.endswith("_hz") or key in ("fps", "crop_scale", "work_face_px")) and not value > 0:
        raise ConfigError(f"{where}: must be above 0, got {value:g}"
                          + (" (inf: no smoothing)" if key.endswith("_hz") else ""))
    if (key.startswith(("w_", "lr_")) or key == "start_s") and not 0 <= value < math.inf:
        raise ConfigError(f"{where}: must be 0 or more (and finite), got {value:g}")
    if key == "resolution" and value < 16:
        raise ConfigError(f"{where}: at least 16 pixels, got {value}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), -float("inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type ``hint`` (int -> float where a float is wanted), or ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or value == "none"):  # TOML has no null: "none" unsets
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:
            try:
                return _coerce(value, a, where)
            except ConfigError:
                if len(options) == 1:  # X | None: X's own message says what is wrong
                    raise
        raise ConfigError(f"{where}: {value!r} is not one of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r}; use one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple and isinstance(value, (list, tuple)):  # TOML arrays: tuple[X, Y] or tuple[X, ...]
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ConfigError(f"{where}: {value!r} needs {len(items)} values")
        return tuple(_coerce(v, a, where) for v, a in zip(value, items))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and value in ("inf", "-inf", "nan"):  # as config.json writes them
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is Any:
        return value
    raise ConfigError(f"{where}: {value!r} is not a {getattr(hint, '__name__', hint)}")


__all__ = ["Config", "ConfigError"]
