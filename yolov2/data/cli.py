"""The command-line vocabulary every `python -m yolov2` command shares.

One spelling per meaning (`--cfg`, `--weights`, `--data`, `--names`, `--batch`, `--device`, `--thresh`,
`--nms`, `--out`, `--json FILE`), the older spellings kept as aliases for one release (`--classes`,
`--voc-root`, `--batch-size`), help that shows every default and one example per command.
"""

from __future__ import annotations

import argparse
import textwrap

# spelling -> the older spellings still accepted (one release; the README says so)
ALIASES: dict[str, tuple[str, ...]] = {
    "--names": ("--classes",),
    "--data": ("--voc-root",),
    "--batch": ("--batch-size",),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each help text (none for switches or unset options); the description and the
    example epilog keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


def parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """A command's parser: `python -m yolov2 PROG`, its description and an `example:` epilog."""
    return argparse.ArgumentParser(prog=f"python -m yolov2 {prog}",
                                   description=textwrap.fill(description, 100),
                                   epilog=f"example:\n  {example}", formatter_class=HelpFormatter)


def option(p: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kw) -> argparse.Action:
    """Add `--name` with its older spellings (ALIASES) as aliases of the same option."""
    return p.add_argument(name, *ALIASES.get(name, ()), **kw)


def add_names(p, what: str = "") -> None:
    option(p, "--names", metavar="FILE", help="class names, one per line (default: the dataset's own, "
           f"classes.names in a devkit root or names= in a .data, else VOC's 20{what})")


def add_data(p, required: bool = True, what: str = "") -> None:
    option(p, "--data", required=required, metavar="DATA",
           help=f"a VOC devkit root (holding VOC2007/, ...) or a darknet .data file{what}")


def add_image_set(p) -> None:
    """`--year` and `--image-set`: which VOC image set of a devkit root (a .data file names its own)."""
    p.add_argument("--year", default="2007", help="VOC year (a devkit root)")
    p.add_argument("--image-set", default="test", help="VOC image set (a devkit root)")
