"""Open a Hugging Face checkpoint folder: config, shard index, and every shard's header, validated
before a single weight is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from q35local.base.errors import InputError
from q35local.base.files import read_json
from q35local.base.settings import cache_dir

from .config import Qwen35Config, load_config
from .header_cache import HeaderCache
from .hub import HubSource
from .safetensors_io import ShardSet, TensorEntry, read_header

INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class Checkpoint:
    path: Path
    config: Qwen35Config
    entries: dict[str, TensorEntry]  # every tensor, by HF name
    shards: ShardSet
    hub: HubSource | None = None

    def done_with(self, path: Path) -> None:
        """Nothing more will be read from this shard."""
        self.shards.release(path)
        if self.hub is not None:
            self.hub.done_with(path)

    @property
    def shard_paths(self) -> list[Path]:
        return sorted({e.path for e in self.entries.values()})

    def close(self) -> None:
        self.shards.close()


def _shard_map(ckpt: Path, allow_missing: bool = False) -> dict[str, Path]:
    """tensor name -> shard file, from the index if there is one, else from the single file."""
    index = ckpt / INDEX
    if index.exists():
        weight_map = read_json(index, "no shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(index, "cannot parse the shard index (no weight_map object)")
        files: dict[str, Path] = {}  # one Path per shard: 397B has ~100K tensors over ~100 files
        for fname in set(weight_map.values()):
            if not isinstance(fname, str) or Path(fname).name != fname or not fname.endswith(".safetensors"):
                name = next(n for n, f in weight_map.items() if f == fname)
                raise InputError(index, f"tensor {name!r} points at {fname!r}, not a shard in this folder")
            files[fname] = ckpt / fname
        out = {name: files[fname] for name, fname in weight_map.items()}
        missing = sorted(f for f, p in files.items() if not p.exists())
        if missing and not allow_missing:
            raise InputError(
                ckpt / missing[0], f"shard listed in {INDEX} is missing ({len(missing)} missing in all)"
            )
        return out
    single = sorted(ckpt.glob("*.safetensors"))
    if len(single) == 1:
        return {name: single[0] for name in read_header(single[0])}
    if len(single) > 1:
        raise InputError(ckpt / INDEX, f"{len(single)} safetensors shards but no index")
    pickles = sorted(p.name for p in ckpt.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(
            ckpt / pickles[0],
            "pickle checkpoints are refused (unpickling runs arbitrary "
            "code); convert them to safetensors first",
        )
    raise InputError(ckpt, "no safetensors weights found")


def open_checkpoint(path: str | Path, hub: HubSource | None = None) -> Checkpoint:
    """A local checkpoint folder, or (with `hub`) a Hub snapshot whose shards may not be here yet."""
    ckpt = Path(path)
    if not ckpt.is_dir():
        raise InputError(ckpt, "not a folder" if ckpt.exists() else "no such checkpoint folder")
    config = load_config(ckpt)
    cache = HeaderCache(ckpt, cache_dir()) if hub is None else None  # Hub shards may come later
    entries = cache.load() if cache else None
    if entries is None:
        entries = _read_headers(ckpt, hub)
        if cache:
            cache.save(entries)
    return Checkpoint(ckpt, config, entries, ShardSet(entries, hub.fetch if hub else None), hub)


def _read_headers(ckpt: Path, hub: HubSource | None) -> dict[str, TensorEntry]:
    """Every shard's header, checked on its own and against the index."""
    names = _shard_map(ckpt, allow_missing=hub is not None)
    entries: dict[str, TensorEntry] = {}
    for shard in sorted(set(names.values())):
        remote = hub.header_opener(shard.name) if hub is not None and not shard.exists() else None
        if hub is not None and not shard.exists() and remote is None:
            raise InputError(shard, "shard is not in the HF cache and HF_HUB_OFFLINE is set")
        h = read_header(shard, *remote) if remote else read_header(shard)
        stray = [n for n in h if names.get(n) is not shard]  # one Path object per shard
        if stray:  # tensors a shard holds that the index puts elsewhere or forgot are an error too
            raise InputError(shard, f"tensor {stray[0]!r} is in this shard but not in {INDEX}")
        entries.update(h)
    if len(entries) != len(names):  # every shard's tensors are in the index: so some listed are absent
        name = next(n for n in names if n not in entries)
        raise InputError(names[name], f"tensor {name!r} is listed in {INDEX} but not in this shard")
    return entries
