"""Vendor the book's browser assets from the npm registry, so the built HTML works offline.

The default Jupyter Book page loads MathJax 3, RequireJS and `@jupyter-widgets/html-manager`
from a CDN when it is opened. This script fetches pinned versions with `npm pack` (npm checks
each tarball against the registry's integrity hash; we check it against ours too), and copies
only the files a page needs into `book_assets/vendor/` (git-ignored; `_config.yml` serves it
as `_static/vendor/`). The folder is deliberately not called `_static`: Jupyter Book would then
inject every `.js`/`.css` in it into every page.

    python tools/vendor_assets.py [--dest book_assets/vendor]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "book_assets" / "vendor"

# package spec -> (sha512 integrity as the registry publishes it, [(glob in the tarball, dest path)]);
# a dest ending in "/" is a folder that receives every match.
# html-manager 1.0.6 is the one myst-nb loads by default (ipywidgets 8 widget protocol 2).
PACKAGES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "@jupyter-widgets/html-manager@1.0.6": (
        "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        # embed-amd.js finds its Font Awesome files next to itself (webpack publicPath = its own URL).
        [("dist/embed-amd.js", "widgets/embed-amd.js")]
        + [(f"dist/*.{ext}", "widgets/") for ext in ("woff2", "woff", "ttf", "eot", "svg")],
    ),
    "requirejs@2.3.8": (
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        [("require.js", "require.js")],
    ),
    # MathJax finds fonts and on-demand components (TeX extensions loaded by `autoload`, the menu's
    # accessibility and speech options) relative to the script, so keep es5/'s layout.
    "mathjax@3.2.2": (
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        [("es5/tex-mml-chtml.js", "mathjax/tex-mml-chtml.js")]
        + [(f"es5/{d}", f"mathjax/{d}")
           for d in ("output/chtml/fonts/woff-v2", "input/tex/extensions", "a11y", "ui", "sre")],
    ),
}
STAMP = ".vendored.json"


def npm_pack(specs: list[str], workdir: Path) -> dict[str, dict]:
    """`npm pack` the specs into workdir; returns npm's JSON record per spec."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("vendor_assets: `npm` not found; install Node.js/npm (Debian: apt-get install npm)")
    proc = subprocess.run([npm, "pack", "--json", "--silent", *specs], cwd=workdir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"vendor_assets: `npm pack {' '.join(specs)}` failed "
                         f"(is the npm registry reachable?):\n{proc.stderr.strip()}")
    records = json.loads(proc.stdout)
    return {spec: rec for spec, rec in zip(specs, records, strict=True)}


def extract(tgz: Path, into: Path) -> Path:
    with tarfile.open(tgz) as tar:
        tar.extractall(into, filter="data")
    return into / "package"  # npm tarballs keep their files under package/


def copy_files(pkg: Path, files: list[tuple[str, str]], dest: Path) -> list[str]:
    copied = []
    for pattern, target in files:
        matches = sorted(pkg.glob(pattern))
        if not matches:
            raise SystemExit(f"vendor_assets: {pattern} not found in {pkg.parent.name}")
        for src in matches:
            out = dest / target / src.name if target.endswith("/") else dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, out, dirs_exist_ok=True)
            else:
                shutil.copy2(src, out)
            copied.append(str(out.relative_to(dest)))
    return copied


def vendor(dest: Path = DEST) -> list[str]:
    """Fetch every package and copy its files into dest (replaced whole); returns what was copied."""
    with tempfile.TemporaryDirectory(prefix="yolov2-vendor-") as tmp:
        work = Path(tmp)
        records = npm_pack(list(PACKAGES), work)
        staged = work / "staged"
        copied = []
        for spec, (integrity, files) in PACKAGES.items():
            rec = records[spec]
            if rec["integrity"] != integrity:
                raise SystemExit(f"vendor_assets: {spec} integrity {rec['integrity']} != pinned {integrity}")
            pkg = extract(work / rec["filename"], work / rec["filename"].removesuffix(".tgz"))
            copied += copy_files(pkg, files, staged)
        (staged / STAMP).write_text(json.dumps(sorted(PACKAGES), indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, dest)
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=DEST,
                    help=f"vendor folder (default {DEST.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    copied = vendor(args.dest)
    print(f"vendored {len(copied)} entries from {', '.join(PACKAGES)} into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
