"""`load_model`: one entry point for every head-model source, with a compact npz cache.

Converting a model (unpickling FLAME, fitting ICT's eye centres, parsing OBJs) happens once; the
result is stored as an uncompressed npz in ``flame_tracker.paths.cache_dir()/models`` keyed by the
source's path, size and modification time, so later loads only memory-copy arrays.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..paths import cache_dir, data_file
from .data import CACHE_VERSION, ModelData, ModelFormatError
from .head import HeadModel

DEFAULT_ICT = ("models", "ict_facekit_light.npz")


def _stamp(path: Path, extra: list[Path] | tuple[Path, ...] = ()) -> str:
    """Identity of a source file or folder for the cache key, and of the ``extra`` files it is read
    with (a FLAME model's landmark files)."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    parts = [str(path.resolve()), str(CACHE_VERSION)]
    for f in [*files, *extra]:
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def convert(path: str | Path, landmark_embedding: str | Path | None = None) -> ModelData:
    """Read a model source without the cache (all components, numpy)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: head model not found. Pass a FLAME .pkl, an ICT-FaceKit .npz or FaceXModel/ "
            "folder, or a cached model .npz (or nothing, for the open ICT model in the data folder)."
        )
    if path.is_dir():
        from .ict import load_facex_folder

        return load_facex_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        from .flame import load_flame

        return load_flame(path, landmark_embedding=landmark_embedding)
    if suffix == ".npz":
        if ModelData.is_model_npz(path):
            return ModelData.load_npz(path)
        from .ict import load_ict_npz

        return load_ict_npz(path)
    raise ModelFormatError(f"{path}: unknown model format {suffix!r}; expected .pkl, .npz or a folder")


def load_model_data(
    path: str | Path | None = None,
    *,
    landmark_embedding: str | Path | None = None,
    use_cache: bool = True,
) -> ModelData:
    """Model arrays from ``path`` (None: the open ICT model), through the npz cache."""
    path = data_file(*DEFAULT_ICT) if path is None else Path(path)
    if not path.exists():
        return convert(path)  # raises the clear not-found error
    if not use_cache or ModelData.is_model_npz(path):
        return convert(path, landmark_embedding)
    embeddings: list[Path] = []
    if path.suffix.lower() == ".pkl":  # its landmark files (next to it, or given) are part of the model
        from .flame import find_embedding_files

        embeddings = find_embedding_files(path, landmark_embedding)
    key = _stamp(path, embeddings)
    if landmark_embedding is not None:
        key += "-" + _stamp(Path(landmark_embedding))
    cached = cache_dir() / "models" / f"{path.stem}-{key}.npz"
    if cached.is_file():
        try:
            return ModelData.load_npz(cached)
        except (ModelFormatError, OSError, ValueError):
            pass  # stale or damaged cache: rebuild below
    data = convert(path, landmark_embedding)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        data.save_npz(cached)
    except OSError:
        pass  # a read-only cache only costs speed
    return data


def load_model(
    path: str | Path | None = None,
    *,
    n_shape: int | None = None,
    n_expr: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    landmark_embedding: str | Path | None = None,
    use_cache: bool = True,
) -> HeadModel:
    """Load a head model as a :class:`HeadModel`.

    path: None for the open ICT-FaceKit model of the data folder, a FLAME ``.pkl`` (2020, 2023,
    2023 Open), an ICT-FaceKit ``.npz`` or ``FaceXModel/`` folder, or a cached model ``.npz``.
    n_shape / n_expr: number of components kept (defaults: FLAME 300/100, ICT all = 100/57).
    landmark_embedding: FLAME landmark file(s); by default searched next to the ``.pkl``.
    """
    data = load_model_data(path, landmark_embedding=landmark_embedding, use_cache=use_cache)
    defaults = data.info.get("default_components", {})
    data = data.truncated(n_shape if n_shape is not None else defaults.get("n_shape"),
                          n_expr if n_expr is not None else defaults.get("n_expr"))
    return HeadModel(data, dtype=dtype).to(device)


def clear_cache() -> int:
    """Delete cached converted models; return how many files were removed."""
    folder = cache_dir(create=False) / "models"
    n = 0
    if folder.is_dir():
        for f in folder.glob("*.npz"):
            os.unlink(f)
            n += 1
    return n
