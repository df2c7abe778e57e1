"""`make bench` (CPU build part): prefill and decode of the llama.cpp build `make setup` chose against
the other builds of its ladder on this machine, side by side.

Each build's wheel comes from the per-user cache (`q35local.llamabuild`; a build missing there is
made now, several minutes on 2 cores), is unpacked under .cache/bench/builds/, and runs in a child
process that imports it ahead of the installed one (checked). Model: the generated ~1.5B MoE at
Q4_K_M (K-quant kernels, the common case) and Q8_0 (the type that takes AMX's path where compiled
in). Prefill: a prompt of at least 512 tokens; decode: 64 greedy tokens. The builds alternate, best of
three per build, so the machine's noise hits all alike; ratios are against the installed build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from bench.runtime import ROOT, WORK, model_path
from q35local import llamabuild as lb

BUILDS = WORK / "builds"
N_PROMPT, N_DECODE, ROUNDS = 512, 64, 3


def unpacked(cfg: lb.BuildConfig) -> Path:
    wheel = lb.build_wheel(cfg)
    dest = BUILDS / f"{cfg.name}-{wheel.parent.name}"
    if not (dest / "llama_cpp").is_dir():
        with zipfile.ZipFile(wheel) as z:
            z.extractall(dest)
        for lib in (dest / "llama_cpp" / "lib").iterdir():
            lib.chmod(0o755)
    return dest


def measure(gguf: Path) -> dict[str, float]:
    """In the child: one load, prefill then decode, on every physical core."""
    import llama_cpp

    from q35local.engine.llama import LlamaEngine
    from q35local.engine.sampling import Sampling
    from q35local.machine.cpufeatures import installed_features

    eng = LlamaEngine(gguf, n_ctx=1024)
    try:
        words = ("the", "keeper", "of", "the", "light", "counts", "ships", "at", "night", "and", "sleeps")
        prompt, i = "", 0
        while len(eng.tokenize(prompt)) < N_PROMPT:
            prompt, i = f"{prompt} {words[i % len(words)]}", i + 1
        list(eng.generate(prompt, sampling=Sampling(temperature=0.0, max_tokens=N_DECODE)))
        st = eng.last_stats
    finally:
        eng.close()
    return {
        "prefill_tps": st.prefill_tps,
        "decode_tps": st.decode_tps,
        "prompt_tokens": st.prompt_tokens,
        "where": llama_cpp.__file__,
        "features": " ".join(sorted(installed_features())),
    }


def run_child(build: Path | None, gguf: Path) -> dict:
    env = dict(os.environ)
    if build is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(build), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run(
        [sys.executable, "-m", "bench.cpubuild", "--measure", str(gguf)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
    data = json.loads(r.stdout.strip().splitlines()[-1])
    if build is not None and not data["where"].startswith(str(build)):
        raise SystemExit(f"the child imported {data['where']}, not the build under {build}")
    return data


def q8_model(q4: Path) -> Path:
    gguf = q4.with_name("bench-moe-Q8_0.gguf")
    if not gguf.exists():
        q35 = [sys.executable, "-m", "q35local.cli", "quantize"]
        subprocess.run([*q35, str(WORK / "bench-moe"), "-o", str(gguf), "--quant", "Q8_0"], check=True)
    return gguf


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(Path(sys.argv[2]))))
        return 0
    rec = lb.read_record()
    installed = rec.config if rec else "installed"
    ladder = lb.ladder_for(rec.choice if rec else "auto")
    others = [c for c in ladder if c.name != installed and c.name != "baseline"]
    builds: dict[str, Path | None] = {f"{installed} (installed)": None}
    for cfg in others:
        builds[cfg.name] = unpacked(cfg)
    q4 = model_path()
    for gguf in (q4, q8_model(q4)):
        best: dict[str, dict] = {}
        for _ in range(ROUNDS):
            for name, path in builds.items():
                got = run_child(path, gguf)
                if "error" in got:
                    best[name] = got
                    continue
                prev = best.get(name, {})
                best[name] = {
                    **got,
                    "prefill_tps": max(got["prefill_tps"], prev.get("prefill_tps", 0.0)),
                    "decode_tps": max(got["decode_tps"], prev.get("decode_tps", 0.0)),
                }
        base = best[f"{installed} (installed)"]
        print(
            f"\nllama.cpp builds on {gguf.name} ({N_PROMPT}-token prefill, {N_DECODE} decoded; "
            f"best of {ROUNDS}, alternating)"
        )
        print("| build | CPU features | prefill t/s | decode t/s | prefill ratio | decode ratio |")
        print("|---|---|---|---|---|---|")
        for name, b in best.items():
            if "error" in b:
                print(f"| {name} | | failed: {b['error']} | | | |")
                continue
            pre, dec = b["prefill_tps"] / base["prefill_tps"], b["decode_tps"] / base["decode_tps"]
            print(
                f"| {name} | {b['features']} | {b['prefill_tps']:.1f} | {b['decode_tps']:.1f} | "
                f"{pre:.3f} | {dec:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
