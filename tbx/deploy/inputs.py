"""What ``tbx screen`` reads: input expansion and decoding into the network's input.

- :func:`expand_inputs`: files, folders (recursive, sorted), globs and ``@list.txt`` (one entry a
  line, ``#`` comments) → the list of sources, in the order given, duplicates removed.  Folders keep
  every regular file that is not hidden — images are recognised by content, not by extension.
- :class:`ScreenInputs`: a map-style dataset over ``(index, source)`` pairs for DataLoader workers.
  Each file is decoded by :func:`tbx.data.imageio.decode_gray8` (the decoder of ``tbx dataset
  build``: DICOM by its ``DICM`` magic with modality + VOI LUT and MONOCHROME1 inversion, 8/16-bit
  PNG/JPEG/TIFF, colour → luminance), resized to fit ``input_size`` keeping the aspect
  (:func:`tbx.data.dataset.resized_shape`, as in training) and padded at the bottom/right to
  ``input_size`` × ``input_size`` (one static shape for both backends).  An unreadable file becomes
  an :class:`InputError` with a one-line reason instead of stopping the run.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tbx.data.dataset import resized_shape
from tbx.data.imageio import decode_gray8, resize_gray8
from tbx.errors import TbxError

THUMB_SIDE = 512  # overlays are drawn on the image downscaled to this longest side


def _walk(folder: Path) -> Iterator[str]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                yield os.path.join(root, f)


def _expand_one(entry: str) -> Iterator[str]:
    if entry.startswith("@"):
        listing = Path(entry[1:])
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise TbxError(f"cannot read the input list ({e.strerror})", listing, "check the path") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                yield from _expand_one(line)
        return
    p = Path(entry)
    if p.is_dir():
        yield from _walk(p)
    elif p.is_file():
        yield entry
    elif glob.has_magic(entry):
        for m in sorted(glob.glob(entry, recursive=True)):
            yield from (_walk(Path(m)) if Path(m).is_dir() else [m])
    else:
        yield entry  # missing: reported in errors.csv like any unreadable input


def expand_inputs(inputs: Sequence[str | Path]) -> list[str]:
    """All sources named by ``inputs`` (see the module docstring), first occurrence kept."""
    seen: set[str] = set()
    out: list[str] = []
    for entry in inputs:
        for src in _expand_one(str(entry)):
            if src not in seen:
                seen.add(src)
                out.append(src)
    if not out:
        raise TbxError(
            "no input files", " ".join(map(str, inputs)), "give files, folders, globs or @list.txt"
        )
    return out


@dataclass
class Decoded:
    """One readable input: the padded uint8 network input and what is needed to map back."""

    index: int
    image: Tensor  # (3, S, S) uint8, the resized image at the top-left, zeros elsewhere
    size: tuple[int, int]  # valid (h, w) inside the padded input
    width: int  # original image pixels
    height: int
    thumb: np.ndarray  # (h', w') uint8, longest side ≤ THUMB_SIDE, for the overlay


@dataclass
class InputError:
    index: int
    reason: str  # one line, never the path nor a header value


def decode_for_network(
    data: bytes, name: str, input_size: int
) -> tuple[Tensor, tuple[int, int], int, int, np.ndarray]:
    """File bytes → ``(padded (3, S, S) uint8, valid (h, w), width, height, thumbnail)``."""
    gray = decode_gray8(data, name)
    height, width = gray.shape
    h, w = resized_shape(height, width, input_size)
    small = resize_gray8(gray, (w, h))
    image = torch.zeros((3, input_size, input_size), dtype=torch.uint8)
    image[:, :h, :w] = torch.from_numpy(np.array(small))[None]
    th, tw = resized_shape(height, width, min(THUMB_SIDE, max(height, width)))
    thumb = resize_gray8(gray, (tw, th))
    return image, (h, w), width, height, thumb


class ScreenInputs(torch.utils.data.Dataset):
    """``(index, source)`` pairs → :class:`Decoded` or :class:`InputError` (never raises)."""

    def __init__(self, items: Sequence[tuple[int, str]], input_size: int):
        self.items = list(items)
        self.input_size = int(input_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Decoded | InputError:
        index, source = self.items[k]
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            return InputError(index, f"cannot read the file ({e.strerror or type(e).__name__})")
        try:
            image, size, width, height, thumb = decode_for_network(data, source, self.input_size)
        except TbxError as e:  # Pillow names the in-memory buffer by its address: noise, not a reason
            what = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", e.what)
            return InputError(index, what + (f" — {e.fix}" if e.fix else ""))
        except Exception as e:  # noqa: BLE001 — a decoder bug must not stop 100,000 images
            return InputError(index, f"cannot decode the image ({type(e).__name__})")
        return Decoded(index, image, size, width, height, thumb)


def collate_inputs(items: list[Decoded | InputError]) -> tuple[list[Decoded], list[InputError]]:
    return [d for d in items if isinstance(d, Decoded)], [e for e in items if isinstance(e, InputError)]
