"""Text inputs, decoded one way: UTF-8 (a byte-order mark allowed), or one clear error.

Class names, image sets, result files, label files and logs must be UTF-8: a file in another encoding
(Latin-1, UTF-16) or a binary file is refused with the file, the line and the byte, not read as
mojibake. A darknet `.cfg` is different: darknet reads bytes and never decodes them, so a comment in
Latin-1 is fine there; :func:`decode_cfg` reads each line as UTF-8, or as Latin-1 where it is not.
"""

from __future__ import annotations

import codecs
from pathlib import Path


class TextError(ValueError):
    """A text input that is not UTF-8 text; the message names the file, line and byte."""


def _body(data: bytes) -> bytes:
    return data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data


def decode_text(data: bytes, where: str | Path, error: type[Exception] = TextError) -> str:
    """UTF-8 bytes (BOM allowed) -> str; else `error` naming `where`, the line, column and byte."""
    body = _body(data)
    if b"\x00" in body:
        line = body.count(b"\n", 0, body.index(b"\x00")) + 1
        raise error(f"{where}:{line}: not a text file (it holds NUL bytes)")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        column = e.start - (body.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{where}:{line}: not UTF-8 text (byte 0x{body[e.start]:02x} at column {column}); "
                    f"save the file as UTF-8") from None


def read_text(path: str | Path, error: type[Exception] = TextError) -> str:
    """A UTF-8 text file's contents (:func:`decode_text`); OSErrors (missing file...) propagate."""
    return decode_text(Path(path).read_bytes(), path, error)


def decode_cfg(data: bytes) -> str:
    """A cfg's bytes as darknet sees them: each line UTF-8 where it is, else Latin-1 (one char a byte)."""
    body = _body(data)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        lines = body.split(b"\n")
    out = []
    for line in lines:
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(line.decode("latin-1"))
    return "\n".join(out)
