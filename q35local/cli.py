"""The `q35` command. Every known failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys

from quantize.errors import InputError

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from quantize.cli import add_make_tiny_parser, add_quantize_parser

    from .chat_cli import add_chat_parser
    from .fit import add_fit_parser
    from .inspect import add_inspect_parser
    from .kld import add_kld_parser
    from .pull import add_pull_parser
    from .run import add_run_parser

    p = argparse.ArgumentParser(prog="q35", description="Run Qwen 3.5 on your own machine.")
    p.add_argument("--version", action="version", version=f"q35 {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_quantize_parser(sub)
    add_fit_parser(sub)
    add_chat_parser(sub)
    add_run_parser(sub)
    add_pull_parser(sub)
    add_inspect_parser(sub)
    add_kld_parser(sub)
    add_make_tiny_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"q35: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "q35: interrupted; nothing was written under the output's name "
            "(q35 quantize: run the same command with --resume to continue)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
