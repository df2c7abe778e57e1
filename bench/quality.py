"""`make bench-quality`: each expert-aware preset against llama.cpp's stock mixture of nearest size,
on a generated checkpoint (default: the ~1.5B benchmark MoE), mean / 99.9% KLD and top-1 against
BF16, llama.cpp computing every logit. Prints a Markdown table."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from q35local.commands.kld import DEFAULT_TEXT, compare

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [
    ("Q2_K_XL", "Q2_K"),
    ("Q3_K_XL", "Q3_K_M"),
    ("Q4_K_XL", "Q4_K_M"),
    ("Q5_K_XL", "Q5_K_M"),
    ("Q6_K_XL", "Q6_K"),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="bench-moe", help="generated checkpoint preset (q35 make-tiny)")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--only", nargs="*", help="only these presets (e.g. Q5_K_XL)")
    args = ap.parse_args()
    work = ROOT / ".cache" / "bench"
    ckpt = work / args.preset
    q35 = [sys.executable, "-m", "q35local.cli"]
    if not (ckpt / "config.json").exists():
        subprocess.run([*q35, "make-tiny", str(ckpt), "--preset", args.preset, "--no-vision"], check=True)

    def build(quant: str) -> Path:
        out = work / f"{args.preset}-{quant}.gguf"
        if not out.exists():
            subprocess.run(
                [*q35, "quantize", str(ckpt), "-o", str(out), "--quant", quant],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        return out

    base = build("BF16")
    text = DEFAULT_TEXT.read_text()
    print(
        f"{args.preset}: mean KLD, 99.9% KLD and top-1 against BF16 over {args.max_tokens} tokens at most\n"
    )
    cols = ["size MiB", "mean KLD", "99.9% KLD", "top-1"]
    print("| " + " | ".join(["preset", *cols, "stock", *cols]) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ours, stock in PAIRS:
        if args.only and ours not in args.only:
            continue
        cells = []
        for q in (ours, stock):
            path = build(q)
            st = compare(base, path, text, max_tokens=args.max_tokens)
            cells += [
                q,
                f"{path.stat().st_size / 2**20:,.1f}",
                f"{st.mean_kld:.5f}",
                f"{st.p999_kld:.4f}",
                f"{st.top1_agreement:.1%}",
            ]
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
