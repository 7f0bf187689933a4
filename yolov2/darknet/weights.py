"""Darknet `.weights` files: a header, `seen`, then every conv layer's floats in cfg order.

Reference: darknet `src/parser.c` (`load_weights_upto`, `load_convolutional_weights`,
`save_weights_upto`, `save_convolutional_weights`) and `examples/darknet.c` (`partial`).

Layout, little endian::

    int32 major, minor, revision
    seen: uint64 if major*10+minor >= 2 and major < 1000 and minor < 1000, else int32 (16-byte header)
    for each [convolutional] layer, in cfg order (no other YOLOv2 layer stores anything):
        biases[n]                      (batch norm's beta when batch_normalize=1; no conv bias then)
        scales[n], rolling_mean[n], rolling_variance[n]      (only when batch_normalize=1)
        weights[n * c/groups * size * size]                  (row-major (out, in, kh, kw): PyTorch's OIHW)

Darknet reads with `fread` and never checks the length; here a file that does not fit the cfg exactly
is an error, except a deliberate partial load (`cutoff`), which may leave floats unread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from yolov2.files import atomic_write

Header = tuple[int, int, int]  # (major, minor, revision)
SAVE_HEADER: Header = (0, 2, 0)  # what darknet's save_weights always writes


class ConvLayer(Protocol):
    """What a file stores of a conv layer (`yolov2.darknet.layers.Convolutional`)."""

    index: int

    def darknet_params(self) -> dict[str, torch.Tensor]: ...


class ConvNet(Protocol):
    """What this module reads of a network (`yolov2.darknet.model.Darknet`): its conv layers."""

    net_options: object

    def conv_layers(self, cutoff: int | None = None) -> Sequence[ConvLayer]: ...


class WeightsError(ValueError):
    """A `.weights` file that cannot be what the cfg asks for; the message names the file."""


def long_seen(major: int, minor: int) -> bool:
    """True when `seen` is stored as 8 bytes (darknet's test in `load_weights_upto`)."""
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def read_weights(path: str | Path) -> tuple[Header, int, np.ndarray]:
    """Read a darknet `.weights` file: ((major, minor, revision), seen, float32 array of the rest)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise WeightsError(f"{p}: weights file not found") from None
    if len(data) < 16:
        raise WeightsError(f"{p}: not a darknet weights file: {len(data)} bytes, "
                           "shorter than a 16-byte header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    # darknet accepts any header, but real files are 0.1.0, 0.2.0 or 0.2.5; text or image bytes read
    # as int32 give huge or negative numbers, so this catches a cfg or jpg passed as weights
    if not all(0 <= v < 1000 for v in (major, minor, revision)):
        raise WeightsError(f"{p}: not a darknet weights file (header reads major={major}, minor={minor}, "
                           f"revision={revision}; expected small version numbers such as 0, 2, 0)")
    size = 20 if long_seen(major, minor) else 16
    if len(data) < size or (len(data) - size) % 4:
        raise WeightsError(f"{p}: not a darknet weights file: {len(data)} bytes is not a {size}-byte "
                           f"header plus whole float32 values")
    seen = int(np.frombuffer(data, "<u8" if size == 20 else "<i4", 1, 12)[0])
    floats = np.frombuffer(data, "<f4", offset=size).astype(np.float32)  # a writable native copy
    return (major, minor, revision), seen, floats


def write_weights(path: str | Path, header: Header, seen: int, floats: np.ndarray) -> None:
    """Write a darknet `.weights` file, atomically; the header decides the width of `seen` (8 bytes
    for 0.2.x)."""
    major, minor, _ = header
    with atomic_write(path) as f:  # a full disk or a crash leaves the previous file intact
        f.write(np.asarray(header, "<i4").tobytes())
        f.write(np.asarray([seen], "<u8" if long_seen(major, minor) else "<i4").tobytes())
        f.write(np.ascontiguousarray(floats, "<f4").tobytes())


def layer_floats(layer: ConvLayer) -> int:
    """How many floats a conv layer stores in a `.weights` file."""
    return sum(t.numel() for t in layer.darknet_params().values())


def _count_error(path: Path, net: ConvNet, cutoff: int | None, need: int, have: int) -> WeightsError:
    cfg = net.net_options.path
    layers = net.conv_layers(cutoff)
    what = f"{len(layers)} conv layers" + (f" below layer {cutoff}" if cutoff is not None else "")
    why = "too short" if have < need else f"{have - need} floats too many"
    msg = (f"{path}: the file holds {have} floats, but {what} of {cfg} need {need} "
           f"({why}: wrong cfg for these weights?)")
    total = 0
    for layer in net.conv_layers():  # a backbone file (darknet19_448.conv.23) ends on a layer boundary
        total += layer_floats(layer)
        if total == have and have < need:
            msg += (f"; the file holds exactly the conv layers before layer {layer.index + 1}: "
                    f"load it with cutoff={layer.index + 1} (darknet's partial)")
    if have > need and cutoff is None:
        msg += "; pass cutoff=N to load only the layers before N on purpose"
    return WeightsError(msg)


def load_darknet_weights(net: ConvNet, path: str | Path, cutoff: int | None = None) -> tuple[Header, int]:
    """Copy a `.weights` file into `net`'s conv layers (those < cutoff); return (header, seen)."""
    path = Path(path)
    header, seen, floats = read_weights(path)
    layers = net.conv_layers(cutoff)
    need = sum(layer_floats(layer) for layer in layers)
    if floats.size < need or (floats.size > need and cutoff is None):
        raise _count_error(path, net, cutoff, need, floats.size)
    offset = 0
    with torch.no_grad():
        for layer in layers:
            for t in layer.darknet_params().values():
                n = t.numel()
                t.copy_(torch.from_numpy(floats[offset:offset + n]).view(t.shape))
                offset += n
    return header, seen


def darknet_floats(net: ConvNet, cutoff: int | None = None) -> np.ndarray:
    """The conv layers' (those < cutoff) floats in file order, as one float32 array."""
    parts = [t.detach().to("cpu", torch.float32).reshape(-1)
             for layer in net.conv_layers(cutoff) for t in layer.darknet_params().values()]
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)


def save_darknet_weights(net: ConvNet, path: str | Path, cutoff: int | None = None) -> None:
    """Darknet's `save_weights_upto`: header 0.2.0, `net.seen` as uint64, conv layers < cutoff."""
    write_weights(path, SAVE_HEADER, net.seen, darknet_floats(net, cutoff))
