"""`q35 pull REPO --quant Q4_K_M`: a GGUF (and its vision projector) from the Hub into the standard HF
cache, through huggingface-hub (resumable downloads with progress, shared with every other tool
that uses that cache). Offline (HF_HUB_OFFLINE=1) it resolves from the cache alone."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from q35local.base.errors import InputError
from q35local.base.limits import quant_arg
from quantize.gguf_read import read_gguf

_MMPROJ_ORDER = ("F16", "BF16", "Q8_0", "F32")


def add_pull_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull", help="download a GGUF from the Hub", description="Download a GGUF (and its mmproj)."
    )
    p.add_argument("repo", type=repo_arg, help="Hub repo id, e.g. unsloth/Qwen3.5-35B-A3B-GGUF")
    p.add_argument("--quant", required=True, type=quant_arg, help="which file: Q4_K_M, UD-Q4_K_XL, Q8_0, ...")
    p.add_argument("--revision", help="branch, tag or commit")
    p.add_argument("--no-mmproj", action="store_true", help="skip the vision projector")
    p.set_defaults(func=run_pull)


_REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def repo_arg(text: str) -> str:
    """An argparse `type=` for a Hub repo id, OWNER/NAME."""
    if not _REPO.fullmatch(text) or ".." in text:
        raise argparse.ArgumentTypeError(f"expected a Hub repo id OWNER/NAME, got {text!r:.80}")
    return text


repo_arg.__name__ = "repo id"


def choose_files(files: list[str], quant: str, mmproj: bool = True) -> list[str]:
    """The GGUF file(s) for `quant` (one file, the shards of a split file, or a QUANT/ folder) and
    the best mmproj. Matching is on whole name parts, so Q4_K_M does not pick Q4_K_M_XL or IQ4_K_M."""
    q = re.escape(quant.upper())
    part = re.compile(rf"(^|[-_./]){q}([-_./]|$)", re.IGNORECASE)
    model = sorted(f for f in files if f.endswith(".gguf") and "mmproj" not in f.lower() and part.search(f))
    if not model:
        tag = re.compile(r"[-_.]((?:UD-)?I?Q\d\w*|BF16|F16|F32)")
        have = sorted({m.group(1) for f in files if (m := tag.search(f))})
        raise InputError(None, f"no {quant} GGUF in this repo (it has: {', '.join(have) or 'no GGUF files'})")
    out = model
    if mmproj:
        mm = [f for f in files if f.endswith(".gguf") and "mmproj" in f.lower()]
        for t in _MMPROJ_ORDER:
            pick = [f for f in mm if t.lower() in f.lower()]
            if pick:
                out = [*out, sorted(pick)[0]]
                break
        else:
            if mm:
                out = [*out, sorted(mm)[0]]
    return out


def pull(repo: str, quant: str, revision: str | None = None, mmproj: bool = True) -> list[Path]:
    from huggingface_hub import HfApi, constants, snapshot_download

    from quantize.hub import hub_errors

    with hub_errors(repo):
        if constants.HF_HUB_OFFLINE:
            snap = Path(snapshot_download(repo, revision=revision, local_files_only=True))
            files = [str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()]
        else:
            files = HfApi().list_repo_files(repo, revision=revision)
        wanted = choose_files(files, quant, mmproj)
        snap = Path(snapshot_download(repo, revision=revision, allow_patterns=wanted))
    paths = [snap / f for f in wanted]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(missing[0], "not downloaded (offline, or the download stopped); run again to resume")
    for p in paths:
        read_gguf(p)  # a file cut short or damaged is named now, not when it is run
    return paths


def run_pull(args: argparse.Namespace) -> int:
    paths = pull(args.repo, args.quant, args.revision, not args.no_mmproj)
    model = next(p for p in paths if "mmproj" not in p.name.lower())
    mm = [p for p in paths if "mmproj" in p.name.lower()]
    for p in paths:
        print(p)
    cmd = f"q35 chat {model}" + (f" --mmproj {mm[0]}" if mm else "")
    print(f"\nCheck it fits:  q35 fit {model}\nChat with it:   {cmd}")
    return 0
