"""A per-user cache of a checkpoint's validated tensor table, so planning it again is quick.

A 397B checkpoint's index and shard headers hold ~94K entries each: parsing and cross-checking
them is most of a `--dry-run` or a `q35 fit` on the folder. The cache keeps the checked table under
the identity of every file it came from (size, inode, device, mtime and ctime in ns) and the list
of shard files in the folder; any write to one of them changes that identity. Like git's index, a
file changed within RACY_S of being cached could keep its identity on a coarse filesystem clock, so
a table with such young files is not cached at all."""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import time
from functools import partial
from operator import itemgetter
from pathlib import Path

from q35local.base.files import write_atomically

from .safetensors_io import TensorEntry

VERSION = 1
RACY_S = 2.0
KEEP = 32  # cache files (one per checkpoint folder) kept, most recently used first

Identity = tuple[int, int, int, int, int]


def identity(path: Path) -> Identity:
    st = path.stat()
    return (st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)


class HeaderCache:
    """The cached tensor table of one checkpoint folder."""

    def __init__(self, folder: Path, cache_dir: Path) -> None:
        self.folder = folder
        key = hashlib.sha256(f"{VERSION}|{folder.resolve()}".encode()).hexdigest()[:32]
        self.file = cache_dir / "headers" / f"{key}.marshal"
        # the sources as the last load() saw them, before the headers were read: a save after a miss
        # keys the table by them (no second stat of every shard, and a file changed during the read
        # no longer matches)
        self._seen: tuple[list[str], dict[str, Identity]] | None = None

    def _sources(self) -> tuple[list[str], dict[str, Identity]]:
        """The folder's shard files, and the identity of each file the table is read from."""
        shards = sorted(p.name for p in self.folder.glob("*.safetensors"))
        files = [*shards, "model.safetensors.index.json"]
        return shards, {n: identity(self.folder / n) for n in files if (self.folder / n).exists()}

    def load(self) -> dict[str, TensorEntry] | None:
        """The table, if every file it came from is unchanged since it was cached."""
        self._seen = None
        try:
            self._seen = self._sources()
            data = marshal.loads(self.file.read_bytes())
            if data[0] != VERSION or data[1:3] != self._seen:
                return None
            paths = [self.folder / n for n in data[3]]
            names, shard, dtypes, shapes, begins, ends = data[4:]
            if not len(names) == len(shard) == len(dtypes) == len(shapes) == len(begins) == len(ends):
                return None
            rows = zip(names, dtypes, shapes, begins, ends, map(paths.__getitem__, shard), strict=True)
            table = dict(zip(names, map(partial(tuple.__new__, TensorEntry), rows), strict=True))
        except (OSError, EOFError, ValueError, TypeError, IndexError):
            return None
        with contextlib.suppress(OSError):
            os.utime(self.file)  # recently used: kept when old cache files are pruned
        return table

    def save(self, table: dict[str, TensorEntry]) -> None:
        """Cache a table just read and checked (not if a source file is too young to trust)."""
        with contextlib.suppress(OSError):
            shards, idents = self._seen or self._sources()
            if any(time.time_ns() - max(i[3], i[4]) < RACY_S * 1e9 for i in idents.values()):
                return
            if not table:
                return
            # columns, and each entry's shard as a number; in C loops (the table has ~94K entries,
            # and the entries of one shard share one Path object)
            rows = table.values()
            names, dtypes, shapes, begins, ends, path_col = (
                tuple(map(itemgetter(i), rows)) for i in range(6)
            )
            by_id = dict(zip(map(id, path_col), path_col, strict=True))
            slot = {i: k for k, i in enumerate(by_id)}
            shard = tuple(map(slot.__getitem__, map(id, path_col)))
            paths = [p.name for p in by_id.values()]
            data = (VERSION, shards, idents, paths, names, shard, dtypes, shapes, begins, ends)
            write_atomically(self.file, marshal.dumps(data))
            files = sorted(self.file.parent.glob("*.marshal"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in files[KEEP:]:
                old.unlink(missing_ok=True)
