"""`q35 quantize` and `q35 make-tiny`: argument parsing, the progress bar and the summary screen."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from q35local.base.limits import THREADS
from q35local.base.units import MB, format_size
from q35local.base.validate import float_arg, int_arg, size_arg

from .convert import ConvertOptions, ConvertResult, convert
from .plan import OutTensor
from .scheme import choices

if TYPE_CHECKING:
    from rich.console import Console

MIN_SPLIT = 1_000_000  # a smaller shard holds one tensor of any real model: a typo, not a plan
MAX_BPW = 32.0  # F32: no recipe has more bits per weight

# rich is imported where it draws: a --dry-run --json never needs it (its import is ~10% of the
# dry run of a 397B checkpoint)


def add_quantize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="convert a Hugging Face Qwen 3.5 checkpoint to GGUF",
        description="Convert a Hugging Face Qwen 3.5 checkpoint folder (BF16, F16, F32 or "
        "block FP8 safetensors) to a GGUF that llama.cpp runs, plus the vision projector.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="checkpoint folder (config.json + *.safetensors) or a Hub repo id (Qwen/Qwen3.5-35B-A3B)",
    )
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) when CHECKPOINT is a repo id")
    p.add_argument(
        "--delete-shards",
        action="store_true",
        help="Hub: delete each downloaded shard from the HF cache once its tensors are written",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output GGUF path")
    p.add_argument(
        "--quant",
        default=None,
        type=str.upper,
        choices=choices(),
        metavar="QUANT",
        help=f"output type or preset: {', '.join(choices())} (default Q8_0)",
    )
    p.add_argument("--recipe", type=Path, help="your own recipe (TOML: ordered regex -> ggml type rules)")
    p.add_argument("--imatrix", type=Path, help="llama.cpp importance matrix (GGUF or legacy .dat)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same command (checks what is already written)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--target-size", type=size_arg(), help="choose the best recipe that fits this file size, e.g. 240G"
    )
    g.add_argument(
        "--target-bpw",
        type=float_arg(0, MAX_BPW, lo_open=True),
        help="choose the best recipe for this many bits per weight",
    )
    p.add_argument("--mmproj", type=Path, help="vision projector path (default: OUT.mmproj.gguf)")
    p.add_argument("--no-mmproj", action="store_true", help="do not write the vision projector")
    p.add_argument("--no-mtp", action="store_true", help="drop the multi-token-prediction head")
    p.add_argument(
        "--split-max-size",
        type=size_arg(MIN_SPLIT),
        help=f"write shards of at most this size, e.g. 50G (at least {format_size(MIN_SPLIT)})",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="write NaN/Inf weights as they are, with a warning and a count (default: refuse, naming it)",
    )
    p.add_argument("--name", help="general.name in the GGUF (default: the checkpoint's name)")
    p.add_argument("--threads", type=int_arg(*THREADS), help="quantization threads (default: all cores)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="plan only: per-class table and the exact output size, nothing read or written",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run_quantize)


def add_make_tiny_parser(sub: argparse._SubParsersAction) -> None:
    from .synth import PRESETS

    p = sub.add_parser("make-tiny", help="generate a small random Qwen 3.5 checkpoint (tests, demos)")
    p.add_argument("output", type=Path, help="folder to write (an earlier generated one there is replaced)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--moe", dest="preset", action="store_const", const="tiny-moe", help="MoE (default)")
    g.add_argument("--dense", dest="preset", action="store_const", const="tiny-dense", help="dense")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named size")
    p.add_argument("--dtype", default="BF16", type=str.upper, choices=["BF16", "F16", "F32", "FP8"])
    p.add_argument("--no-vision", action="store_true", help="text only (a *ForCausalLM checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--if-missing", action="store_true", help="do nothing if the folder already holds a checkpoint"
    )
    p.set_defaults(func=run_make_tiny, preset="tiny-moe")


def run_make_tiny(args: argparse.Namespace) -> int:
    from .synth import spec_for, write_checkpoint

    if args.if_missing and (args.output / "config.json").exists():
        print(f"{args.output}: already there")
        return 0
    extra: dict[str, object] = {"dtype": args.dtype, "seed": args.seed}
    if args.no_vision:
        extra["vision"] = None
    path = write_checkpoint(args.output, spec_for(args.preset, **extra))
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"wrote {args.preset} checkpoint ({args.dtype}, {format_size(size)}) to {path}")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    opts = ConvertOptions(
        checkpoint=args.checkpoint,
        output=args.output,
        quant=args.quant or "Q8_0",
        recipe=args.recipe,
        mmproj=args.mmproj,
        write_mmproj=not args.no_mmproj,
        mtp=not args.no_mtp,
        split_max_size=args.split_max_size,
        name=args.name,
        threads=args.threads,
        imatrix=args.imatrix,
        resume=args.resume,
        revision=args.revision,
        delete_shards=args.delete_shards,
        target_bytes=args.target_size,
        target_bpw=args.target_bpw,
        allow_nonfinite=args.allow_nonfinite,
    )
    result = convert(opts, dry_run=True) if args.dry_run else _convert_with_progress(opts)
    if args.json:
        print(json.dumps(summary_json(result), indent=2))
    else:
        from rich.console import Console

        print_summary(Console(), result, dry_run=args.dry_run)
    return 0


def _convert_with_progress(opts: ConvertOptions) -> ConvertResult:
    """The conversion under a progress bar on stderr (bytes, tensors, speed, ETA) when it is a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[tensors]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("converting", total=None, tensors="")
        state = {"done": 0, "total": 0}

        def on_plan(total_bytes: int, total_tensors: int) -> None:
            state["total"] = total_tensors
            bar.update(task, total=total_bytes, tensors=f"0/{total_tensors} tensors")

        def progress(n: int, finished: bool, name: str) -> None:
            if finished:
                state["done"] += 1
            bar.update(
                task,
                advance=n,
                description=name[:28].ljust(28),
                tensors=f"{state['done']}/{state['total']} tensors",
            )

        return convert(opts, progress, on_plan=on_plan)


# one row of the summary table (and of --json's "classes"); "class" is a keyword, hence this form
ClassRow = TypedDict("ClassRow", {"class": str, "type": str, "tensors": int, "params": int, "bytes": int})


def class_rows(tensors: list[OutTensor]) -> list[ClassRow]:
    """Per tensor class and type: tensors, params, bytes; largest first. Vectors (norms, ssm_a,
    ssm_dt, biases) are many tiny tensors and share one row, which keeps the table on one screen."""
    rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in tensors:
        key = ("norms and other vectors" if len(t.shape) == 1 else t.cls, t.ggml_type.name)
        rows[key][0] += 1
        rows[key][1] += t.numel
        rows[key][2] += t.nbytes
    out: list[ClassRow] = [
        {"class": c, "type": ty, "tensors": n, "params": p, "bytes": b} for (c, ty), (n, p, b) in rows.items()
    ]
    return sorted(out, key=lambda r: -r["bytes"])


def summary_json(r: ConvertResult) -> dict[str, object]:
    params = sum(t.numel for t in r.model.tensors)
    return {
        "scheme": r.label,
        "output_bytes": r.model.nbytes,
        "bits_per_weight": 8 * r.model.nbytes / params,
        "params": params,
        "files": [str(p) for p in r.model.paths],
        "mmproj_bytes": r.mmproj.nbytes if r.mmproj else 0,
        "classes": class_rows(r.model.tensors),
        "notes": r.notes,
    }


def print_summary(console: Console, r: ConvertResult, dry_run: bool = False) -> None:
    """One screen: per tensor class (type, count, params, bytes), files, time."""
    from rich.table import Table

    rows = class_rows(r.model.tensors)
    title = f"{r.model.paths[0].name}: {r.label}" + (" (dry run: nothing written)" if dry_run else "")
    table = Table(title=title, title_justify="left")
    for col in ("class", "type", "tensors", "params", "MB", "bits/weight"):
        table.add_column(col, justify="left" if col in ("class", "type") else "right")
    for row in rows:
        n, b = row["params"], row["bytes"]
        table.add_row(
            row["class"], row["type"], str(row["tensors"]), f"{n:,}", f"{b / MB:,.1f}", f"{8 * b / n:.2f}"
        )
    params = sum(row["params"] for row in rows)
    tensor_bytes = sum(row["bytes"] for row in rows)
    table.add_row(
        "total",
        "",
        str(len(r.model.tensors)),
        f"{params:,}",
        f"{tensor_bytes / MB:,.1f}",
        f"{8 * tensor_bytes / params:.2f}",
        style="bold",
    )
    console.print(table)

    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    for sh in r.model.shards:
        line(f"model   {sh.path}  ({sh.file_size():,} bytes, {format_size(sh.file_size())})")
    if r.mmproj:
        for sh in r.mmproj.shards:
            line(f"mmproj  {sh.path}  ({format_size(sh.file_size())}, {len(r.mmproj.tensors)} tensors)")
    for note in r.notes:
        line(f"note    {note}")
    if dry_run:
        line(f"planned in {r.seconds:.2f} s")
    else:
        total = r.model.nbytes + (r.mmproj.nbytes if r.mmproj else 0)
        line(f"done in {r.seconds:.1f} s ({format_size(total / max(r.seconds, 1e-9))}/s written)")
