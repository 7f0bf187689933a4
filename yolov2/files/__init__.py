"""Files: every output written atomically (`atomic`), every text input decoded one way (`text`).

The bottom of the package, below `darknet` and `data`: it imports nothing else from yolov2, and every
part may import it (`tests/test_layout.py`). The rules it implements, for every command:

* An output file is written to a temporary file beside it (`.<name>.<pid>.tmp`), flushed to disk, then
  renamed onto it: a reader sees the previous file or the new one, never half of one. A failed write
  (a full disk, a killed process, Ctrl-C) leaves the previous file as it was and no temporary file;
  the error is one line naming the file (`WriteError`).
* A text input (class names, image sets, result files, labels, logs) is UTF-8, with or without a BOM;
  anything else is one line naming the file, the line and the byte (`TextError`). A darknet `.cfg` is
  read as darknet reads it, byte by byte: a line that is not UTF-8 is read as Latin-1 (`decode_cfg`).
"""

from __future__ import annotations

from yolov2.files.atomic import (
    WriteError,
    atomic_path,
    atomic_write,
    os_error_behind,
    remove_stale_temps,
    temp_path,
    write_bytes,
    write_error,
    write_files,
    write_text,
)
from yolov2.files.text import TextError, decode_cfg, decode_text, read_text

__all__ = ["TextError", "WriteError", "atomic_path", "atomic_write", "decode_cfg", "decode_text",
           "os_error_behind", "read_text", "remove_stale_temps", "temp_path", "write_bytes", "write_error",
           "write_files", "write_text"]
