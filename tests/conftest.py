"""Shared test fixtures. Tests that need the shared data folder use ``shared_dir``; on a machine
without it they skip with a clear reason, but in CI (``CI`` set) a missing folder is an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from flame_tracker.paths import data_dir

#: Devices the device-parametrised tests run on: the CPU, and CUDA where this machine has it.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """A test that takes ``device`` runs once per available device (CPU; CUDA on a GPU machine)."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    """A test that takes ``dtype`` runs in single and double precision."""
    return request.param


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = data_dir()
    if not (path / "models").is_dir():
        msg = f"shared data folder not found at {path} (set FLAME_TRACKER_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must provide it")
        pytest.skip(msg)
    return path


@pytest.fixture
def truncated_mkv(shared_dir: Path, tmp_path: Path) -> Path:
    """A streamable copy (mkv, remuxed without re-encoding) of a shared clip, cut in half: the
    first half decodes, then the stream breaks."""
    import av

    src = av.open(str(shared_dir / "videos" / "talking_ex3.mp4"))
    full = tmp_path / "full.mkv"
    dst = av.open(str(full), mode="w")
    ostream = dst.add_stream_from_template(src.streams.video[0])
    for packet in src.demux(src.streams.video[0]):
        if packet.dts is not None:
            packet.stream = ostream
            dst.mux(packet)
    dst.close()
    src.close()
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    return cut
