"""Checkpoints that are small on the wire and huge once read: what the server's checkpoint
checks are measured against (``bench-checkpoints``, the hardening tests). Each writes one file
into a folder and returns its path; none of them is ever loaded by the app unchecked."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from . import weights as W
from .runtime import build_random
from .zoo import get_spec

# 40 MB of EMPTY_DICT opcodes: torch's pure-Python unpickler keeps ~72 bytes per byte of it.
EMPTY_DICTS = 40 << 20


def valid_zip(d: Path, key: str) -> Path:
    path = d / f"{key}_valid.pth"
    torch.save(build_random(get_spec(key)).state_dict(), path)
    return path


def valid_safetensors(d: Path, key: str) -> Path:
    from safetensors.torch import save_file

    path = d / f"{key}_valid.safetensors"
    save_file({k: v.contiguous() for k, v in build_random(get_spec(key)).state_dict().items()}, str(path))
    return path


def valid_legacy(d: Path, key: str) -> Path:
    """A valid checkpoint in the pre-zip format (a pickle stream, then the raw storages)."""
    path = d / f"{key}_valid_legacy.pth"
    torch.save(build_random(get_spec(key)).state_dict(), path, _use_new_zipfile_serialization=False)
    return path


def packed_broadcast(d: Path, key: str, n: int = 23_000) -> Path:
    """The app's packed format (int8 + ``::scale``) with a (1, n) tensor and an (n,) scale:
    unpacked without a check it broadcasts to an n x n float32 tensor (2.1 GB at 23,000)."""
    from safetensors.torch import save_file

    name = next(iter(build_random(get_spec(key)).state_dict()))
    path = d / f"{key}_packed_broadcast.safetensors"
    save_file({name: torch.ones(1, n, dtype=torch.int8), name + "::scale": torch.ones(n)}, str(path))
    return path


def legacy_empty_dicts(d: Path, size: int = EMPTY_DICTS) -> Path:
    """A pre-zip checkpoint (a pickle stream) that is nothing but empty dicts."""
    path = d / "legacy_empty_dicts.pth"
    with open(path, "wb") as f:
        f.write(b"\x80\x02")
        chunk = b"}" * (1 << 20)
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(b".")
    return path


def zip_pickle_bomb(d: Path, size: int = 16 << 20) -> Path:
    """A torch zip whose data.pkl is ``size`` bytes of empty dicts (deflated: ~20 KB on the wire)."""
    path = d / "zip_pickle_bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + b"}" * size + b".")
        zf.writestr("archive/version", b"3\n")
        zf.writestr("archive/byteorder", b"little")
    return path


CASES = {
    "valid .pth (zip)": valid_zip,
    "valid .safetensors": valid_safetensors,
    "valid legacy .pth (pre-1.6)": valid_legacy,
    "packed broadcast .safetensors": packed_broadcast,
    "legacy pickle of empty dicts": lambda d, key: legacy_empty_dicts(d),
    "zip with a 16 MB data.pkl": lambda d, key: zip_pickle_bomb(d),
}


def expected(key: str) -> W.ExpectedTensors:
    spec = get_spec(key)
    return W.ExpectedTensors.of(spec.build_meta(), ignored=spec.drop_keys)
