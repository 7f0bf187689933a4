"""tools/vendor_assets.py refuses, with a clear message, what it cannot vendor (no network needed).

A fake `npm` on PATH stands in for the registry; `make book` exercises the real one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vendor_assets():
    spec = importlib.util.spec_from_file_location("vendor_assets", ROOT / "tools" / "vendor_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_npm(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)


def test_registry_failure_is_reported(vendor_assets, tmp_path: Path, monkeypatch) -> None:
    fake_npm(tmp_path / "bin", "echo 'npm error code E404' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SystemExit, match=r"npm pack .*mathjax@3\.2\.2.* failed .*\n.*E404"):
        vendor_assets.vendor(tmp_path / "vendor")
    assert not (tmp_path / "vendor").exists()


def test_integrity_mismatch_is_refused(vendor_assets, tmp_path: Path, monkeypatch) -> None:
    records = [{"filename": f"p{k}.tgz", "integrity": "sha512-tampered"}
               for k in range(len(vendor_assets.PACKAGES))]
    fake_npm(tmp_path / "bin", f"cat <<'EOF'\n{json.dumps(records)}\nEOF\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    first = next(iter(vendor_assets.PACKAGES))
    with pytest.raises(SystemExit, match=f"{first} integrity sha512-tampered != pinned"):
        vendor_assets.vendor(tmp_path / "vendor")
    assert not (tmp_path / "vendor").exists()


def test_missing_npm_is_reported(vendor_assets, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="`npm` not found"):
        vendor_assets.vendor(tmp_path / "vendor")
