"""Darknet `.cfg` files: sections of `key=value` lines, read as darknet's `read_cfg` does.

Reference: darknet `src/parser.c` (`read_cfg`, `option_find_*`) and `src/option_list.c`.
Darknet strips every space, tab and newline from a line, skips lines that start with `#`, `;`
or are empty, opens a section at `[name]`, and stores `key=value` pairs as strings. Typed
lookups with defaults live on :class:`Section` so each layer reads its keys the way darknet does.
Darknet reads bytes: a line that is not UTF-8 (a Latin-1 comment) is read as Latin-1 here
(`yolov2.files.decode_cfg`). Numbers must be finite: darknet's `atof` takes `nan`, nothing here does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from yolov2.files import decode_cfg


class CfgError(ValueError):
    """A cfg file that darknet would refuse (or silently misread); the message names file and line."""


@dataclass
class Section:
    """One `[type]` block of a cfg: its options as strings, and where it came from."""

    type: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0  # 1-based line of the `[type]` header
    path: str = "<string>"
    used: set[str] = field(default_factory=set, repr=False)

    def where(self, key: str | None = None) -> str:
        what = f"[{self.type}] at line {self.line}"
        return f"{self.path}: {what}" + (f", key '{key}'" if key else "")

    def has(self, key: str) -> bool:
        return key in self.options

    def get_str(self, key: str, default: str | None = None) -> str:
        self.used.add(key)
        if key in self.options:
            return self.options[key]
        if default is None:
            raise CfgError(f"{self.where(key)}: required key is missing")
        return default

    def get_int(self, key: str, default: int | None = None) -> int:
        self.used.add(key)
        if key not in self.options:
            if default is None:
                raise CfgError(f"{self.where(key)}: required key is missing")
            return default
        raw = self.options[key]
        try:
            return int(raw)
        except ValueError:
            raise CfgError(f"{self.where(key)}: expected an integer, got '{raw}'") from None

    def get_float(self, key: str, default: float | None = None) -> float:
        self.used.add(key)
        if key not in self.options:
            if default is None:
                raise CfgError(f"{self.where(key)}: required key is missing")
            return default
        raw = self.options[key]
        try:
            value = float(raw)
        except ValueError:
            raise CfgError(f"{self.where(key)}: expected a number, got '{raw}'") from None
        if not math.isfinite(value):
            raise CfgError(f"{self.where(key)}: expected a finite number, got '{raw}'")
        return value

    def get_list(self, key: str, kind: type = float, default: list | None = None) -> list:
        """A comma-separated list (`anchors`, `steps`, `scales`, route `layers`)."""
        self.used.add(key)
        if key not in self.options:
            if default is None:
                raise CfgError(f"{self.where(key)}: required key is missing")
            return list(default)
        raw = self.options[key]
        try:
            values = [kind(v) for v in raw.split(",") if v != ""]
        except ValueError:
            raise CfgError(f"{self.where(key)}: expected a list of {kind.__name__}, got '{raw}'") from None
        if kind is float and not all(map(math.isfinite, values)):
            raise CfgError(f"{self.where(key)}: expected finite numbers, got '{raw}'")
        return values


def parse_cfg_text(text: str, path: str = "<string>") -> list[Section]:
    """Parse cfg text into sections, in file order; the first is normally `[net]`."""
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())  # darknet's strip(): removes all whitespace, inside too
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"{path}:{lineno}: malformed section header '{raw.strip()}'")
            sections.append(Section(type=line[1:-1], line=lineno, path=path))
            continue
        if "=" not in line:
            raise CfgError(f"{path}:{lineno}: expected 'key=value' or '[section]', got '{raw.strip()}'")
        if not sections:
            raise CfgError(f"{path}:{lineno}: option '{raw.strip()}' appears before any [section]")
        key, value = line.split("=", 1)
        if not key:
            raise CfgError(f"{path}:{lineno}: option with an empty key: '{raw.strip()}'")
        sections[-1].options[key] = value
    if not sections:
        raise CfgError(f"{path}: no sections found (is this a darknet .cfg file?)")
    return sections


def parse_cfg(path: str | Path) -> list[Section]:
    """Read a darknet `.cfg` file; errors name the file and line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CfgError(f"{p}: cfg file not found") from None
    except OSError as e:
        raise CfgError(f"{p}: cannot read cfg file: {e.strerror or e}") from None
    if b"\x00" in data:
        raise CfgError(f"{p}: not a text file (is this a .weights file passed as the cfg?)")
    return parse_cfg_text(decode_cfg(data), str(p))


def load_cfg(cfg: str | Path | Sequence[Section]) -> list[Section]:
    """Sections from a cfg path, a shipped cfg's name (`yolov2-tiny-voc`), or already parsed sections."""
    if not isinstance(cfg, (str, Path)):
        return list(cfg)
    return parse_cfg(cfg_file(cfg))


def cfg_file(cfg: str | Path) -> Path:
    """A cfg path, or the shipped cfg of that name (`yolov2-tiny-synth`); a name that is neither is an
    error listing the shipped cfgs."""
    p = Path(cfg)
    if p.exists() or p.parent != Path(".") or p.suffix not in ("", ".cfg"):
        return p
    try:
        return stock_cfg(p.name)
    except CfgError:
        raise CfgError(f"{cfg}: cfg file not found (nor a shipped cfg of that name; shipped: "
                       f"{', '.join(shipped_cfgs())})") from None


def shipped_cfgs() -> list[str]:
    """The names of the cfgs shipped in the package (`python -m yolov2 cfgs` lists them)."""
    return sorted(f.stem for f in (Path(__file__).parent / "cfgs").glob("*.cfg"))


def stock_cfg(name: str) -> Path:
    """Path of a cfg shipped in the package: `yolov2-tiny-voc`, `yolov2-voc`, `yolov2-tiny-synth`."""
    p = Path(__file__).parent / "cfgs" / (name if name.endswith(".cfg") else name + ".cfg")
    if not p.exists():
        raise CfgError(f"no shipped cfg named '{name}'; known: {', '.join(shipped_cfgs())}")
    return p
