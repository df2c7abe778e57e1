"""A Hugging Face Hub repo id as the checkpoint: small files first, each shard into the standard HF
cache when the pass first needs it, and (with --delete-shards) out again once its tensors are
written, so a 397B quantize needs disk for the output plus about one shard.

Shard headers come first, by range requests, so planning and validation happen before any
download; offline (HF_HUB_OFFLINE=1) every shard must already be in the cache."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from q35local.base.errors import InputError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SMALL_FILES = ["*.json", "*.jinja", "*.txt", "tokenizer*"]


def looks_like_repo_id(arg: str) -> bool:
    return not Path(arg).exists() and bool(REPO_ID.match(arg))


@dataclass
class HubSource:
    repo_id: str
    revision: str | None
    snapshot: Path  # the cache's snapshot folder for this revision
    delete_shards: bool = False
    fetched: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def header_opener(self, filename: str) -> tuple[Callable[[], BinaryIO], int] | None:
        """(opener, size) reading a remote shard by range requests, or None offline."""
        from huggingface_hub import HfFileSystem, constants

        if constants.HF_HUB_OFFLINE:
            return None
        fs = HfFileSystem()
        path = f"{self.repo_id}/{filename}"
        with hub_errors(path):
            size: int = fs.info(path, revision=self.revision)["size"]
        return (lambda: fs.open(path, "rb", revision=self.revision, block_size=1 << 20)), size

    def fetch(self, path: Path) -> None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            with hub_errors(str(path)):
                got = Path(hf_hub_download(self.repo_id, path.name, revision=self.revision))
        except LocalEntryNotFoundError:
            raise InputError(path, "shard is not in the HF cache and the Hub cannot be reached") from None
        if got.resolve() != path.resolve():
            raise InputError(path, f"the HF cache put the shard at {got}")
        self.fetched.append(path.name)

    def done_with(self, path: Path) -> None:
        """The pass has read everything it needs from this shard."""
        if not self.delete_shards or not path.exists():
            return
        blob = path.resolve()
        path.unlink()
        if blob != path and blob.exists():
            blob.unlink()
        self.deleted.append(path.name)


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Network and Hub failures as one line naming `what` (a repo id or a file), never a traceback.
    huggingface-hub raises its own errors, OSError, or its HTTP client's exceptions (whose module
    differs between versions), so anything that is not already ours is caught here."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        yield
    except InputError:
        raise
    except RepositoryNotFoundError:
        raise InputError(
            what, "no such repository on the Hub (or it is private: log in with `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise InputError(what, f"not in the local HF cache, and {why}") from None
    except Exception as e:  # the network boundary: connection, DNS, HTTP status, timeouts
        msg = " ".join(str(e).split())[:200]
        raise InputError(
            what, f"could not reach the Hub ({type(e).__name__}: {msg}); run again to resume"
        ) from None


def open_hub(repo_id: str, revision: str | None = None, delete_shards: bool = False) -> HubSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # the argument may also have been meant as a folder, so the Hub's answers say that too; the
    # connection errors of the HTTP client fall through to hub_errors
    with hub_errors(repo_id):
        try:
            snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=SMALL_FILES))
        except LocalEntryNotFoundError:
            raise InputError(
                repo_id,
                "no such checkpoint folder, and no such repo in the local HF cache "
                "(the Hub cannot be reached)",
            ) from None
        except HfHubHTTPError as e:
            raise InputError(repo_id, f"no such checkpoint folder, and the Hub says: {e}") from None
    return HubSource(repo_id, revision, snap, delete_shards)
