"""Where a run writes, decided before any work: outputs that are not inputs, a lock on each output
name while it is written, a temporary name per run, and every file published together at the end.

A run that fails leaves nothing under an output's name; an interrupted one leaves its temporaries
(and their journals) for `--resume`; two runs to the same output never share a file: the second is
told who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from q35local.base.errors import InputError


def check_writable(path: Path) -> None:
    """Fail before any work if the output cannot be created."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"output folder {parent} does not exist")
    if path.is_dir():
        raise InputError(path, "output path is a folder")
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")  # never a run's temporary name
    try:
        with open(probe, "wb"):
            pass
    except OSError as e:
        raise InputError(path, f"cannot write here: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def refuse_inputs(outputs: Iterable[Path], folder: Path, inputs: Iterable[Path]) -> None:
    """An output that is an input (by any name: a link, a hard link) would destroy it when written;
    one inside the input folder would be read as part of the checkpoint next time."""
    root = folder.resolve()
    ins = [(p, p.resolve()) for p in inputs]
    for out in outputs:
        target = out.resolve()  # follows links, the output's own included when it exists
        for given, real in ins:
            if target == real or (out.exists() and real.exists() and os.path.samefile(out, real)):
                alias = "" if given == out else f" ({given})"
                raise InputError(out, f"is an input of this run{alias}: writing it would destroy it")
        if target == root or root in target.parents:
            raise InputError(out, f"is inside the checkpoint folder {folder}, an input: write it elsewhere")


def new_tag() -> str:
    """This run's mark in its temporary names: two runs to one output never share a file."""
    return f"{os.getpid()}-{secrets.token_hex(3)}"


def temp_path(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}.partial")


def journal_path(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}.journal")


def leftovers(final: Path) -> list[tuple[Path, Path]]:
    """Earlier runs' (temporary, journal) pairs for `final`, newest first (hold its lock to trust
    that none is being written)."""
    found = []
    for tmp in final.parent.glob(f".{_glob_escape(final.name)}.*partial"):
        middle = tmp.name[len(final.name) + 2 : -len(".partial")]  # the tag, "" for the old naming
        tag = middle.rstrip(".")
        journal = final.with_name(f".{final.name}.{tag}.journal" if tag else f".{final.name}.journal")
        with contextlib.suppress(OSError):
            found.append((tmp.stat().st_mtime_ns, tmp, journal))
    return [(t, j) for _, t, j in sorted(found, reverse=True)]


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def remove(paths: Iterable[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def lock_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.lock")


class OutputLock:
    """An exclusive lock (flock) on each output name for the length of a run.

    The lock file holds the holder's pid, start time and command, which is what a second run is
    told. It is removed while still locked, so that a run waiting on the removed file notices (its
    inode is no longer the path's) and locks the new one instead."""

    def __init__(self, outputs: Iterable[Path]) -> None:
        self.outputs = sorted({p.resolve() for p in outputs})
        self._held: list[tuple[Path, int]] = []

    def __enter__(self) -> OutputLock:
        try:
            for out in self.outputs:
                self._held.append((lock_path(out), self._lock(out)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _lock(self, out: Path) -> int:
        path = lock_path(out)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise InputError(out, f"cannot lock for writing ({path.name}: {e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another run"
                os.close(fd)
                raise InputError(
                    out, f"is being written by another q35 run ({holder}); wait for it or stop it"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder had just removed: lock the path's new one
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        cmd = " ".join(sys.argv[1:3]) or "q35"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {started}: q35 {cmd}".encode(), 0)
        return fd

    def __exit__(self, *exc: object) -> None:
        for path, fd in reversed(self._held):
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        self._held.clear()


def publish(pairs: list[tuple[Path, Path]]) -> None:
    """Rename every (temporary, final) pair, in order, or none: a failed rename undoes the earlier
    ones. Callers put the file users open (a model's first shard) last."""
    done: list[Path] = []
    try:
        for tmp, final in pairs:
            os.replace(tmp, final)
            done.append(final)
    except OSError as e:
        remove(done)
        raise InputError(pairs[len(done)][1], f"cannot rename into place: {e.strerror or e}") from None
