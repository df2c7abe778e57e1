"""The `q35` command. Every known failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from q35local.base import VERSION
from q35local.base.errors import InputError

# command -> (module, function adding its subparser), in the order `q35 --help` lists them. Only
# the module of the command being run is imported: a `q35 quantize --dry-run` need not load the
# planner, the chat app or llama.cpp's bindings.
COMMANDS = {
    "quantize": ("quantize.cli", "add_quantize_parser"),
    "fit": ("q35local.commands.fit", "add_fit_parser"),
    "chat": ("q35local.commands.chat", "add_chat_parser"),
    "run": ("q35local.commands.run", "add_run_parser"),
    "serve": ("q35local.commands.serve", "add_serve_parser"),
    "pull": ("q35local.commands.pull", "add_pull_parser"),
    "inspect": ("q35local.commands.inspect", "add_inspect_parser"),
    "kld": ("q35local.commands.kld", "add_kld_parser"),
    "make-tiny": ("quantize.cli", "add_make_tiny_parser"),
}
AddParser = Callable[[argparse._SubParsersAction], None]  # what each of those functions is


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are bad input too: one line naming the option and the problem, exit 2."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("q35").strip()
        self.exit(2, f"q35: error: {where + ': ' if where else ''}{message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: every command, or only the one argv names (help and errors for an
    unknown command still list them all)."""
    first = next((a for a in argv or [] if not a.startswith("-")), None)
    names = [first] if first in COMMANDS else list(COMMANDS)
    p = OneLineParser(prog="q35", description="Run Qwen 3.5 on your own machine.")
    p.add_argument("--version", action="version", version=f"q35 {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in names:
        module, function = COMMANDS[name]
        add: AddParser = getattr(importlib.import_module(module), function)  # imported by name: lazily
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as e:  # --help, --version or a usage error (already printed): its status
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"q35: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `q35 fit --json | head`: the reader left; say nothing more
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # what a shell reports for a command ended by SIGPIPE
    except KeyboardInterrupt:
        if args.command == "quantize":
            print(
                "q35: interrupted; nothing was written under the output's name "
                "(run the same command with --resume to continue)",
                file=sys.stderr,
            )
        else:
            print("q35: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
