"""The npvae command line: `python -m npvae COMMAND` or `npvae COMMAND`."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("gradcheck", help="check every hand-written gradient against central differences")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gradcheck":
        from .gradcheck import main as gradcheck_main
        return gradcheck_main()
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
