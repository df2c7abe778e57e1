"""`make bench`: what checking untrusted input costs.

1. The weights.
Every chunk of every tensor is checked for NaN/Inf (and, for F16 outputs, for values past F16's
range) before it is encoded. This converts the generated bench MoE (see bench.convert) to BF16, the
cheapest encode, so the check's share is the largest it gets (a K-quant spends ~10x longer
encoding), with the check and with it switched off in the same process, alternating, three times
each; it prints the best times and their ratio.

2. The chat template's render budget. The built-in template rendered through q35's sandbox (its
watchdog and size hooks) against jinja2's plain ImmutableSandboxedEnvironment with the same options
(the baseline: what rendering cost before the budget), for a conversation of 1 and of 21 messages;
the two prompts are checked equal, then the best of many timed renders of each is printed.
"""

from __future__ import annotations

import json
import tempfile
import time
import timeit
from pathlib import Path

import quantize.stream as stream
from bench.convert import WORK
from quantize.convert import ConvertOptions, convert
from quantize.synth import spec_for, write_checkpoint


def _time(ckpt: Path, quant: str, out: Path) -> float:
    t0 = time.perf_counter()
    convert(ConvertOptions(checkpoint=ckpt, output=out, quant=quant, write_mmproj=False))
    return time.perf_counter() - t0


def _plain_render():
    """The baseline: jinja2's sandbox with HF's options and no budget (as q35 rendered before it)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from q35local.chat.template import DEFAULT_TEMPLATE

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    t = env.from_string(DEFAULT_TEMPLATE)
    return lambda msgs: t.render(
        messages=msgs, add_generation_prompt=True, enable_thinking=True, bos_token="", eos_token="<|im_end|>"
    )


def template_rows() -> None:
    from q35local.chat.template import ChatTemplate

    ours, plain = ChatTemplate.default(), _plain_render()
    print("\n| render of the built-in template | jinja2 sandbox, no budget | q35 (budget) | ratio |")
    print("|---|---|---|---|")
    for n in (1, 21):
        msgs = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20} for i in range(n)
        ]
        a, b = plain(msgs), ours.render(msgs, enable_thinking=True)
        assert a == b, "the baseline must render the same prompt"
        runs = 2000 if n == 1 else 300
        t_plain = min(timeit.repeat(lambda m=msgs: plain(m), number=runs, repeat=5)) / runs
        t_ours = (
            min(timeit.repeat(lambda m=msgs: ours.render(m, enable_thinking=True), number=runs, repeat=5))
            / runs
        )
        print(f"| {n} message(s) | {t_plain * 1e6:.1f} µs | {t_ours * 1e6:.1f} µs | {t_ours / t_plain:.2f} |")


def main() -> int:
    template_rows()
    WORK.mkdir(parents=True, exist_ok=True)
    ckpt = WORK / "bench-moe"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, spec_for("bench-moe"))
    checked = stream._check_finite
    print("| conversion | unchecked (best of 3) | checked (best of 3) | checked / unchecked |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        out = Path(d) / "m.gguf"
        for quant in ("BF16",):
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(3):
                for on in (False, True):
                    stream._check_finite = checked if on else (lambda *a: None)
                    times[on].append(_time(ckpt, quant, out))
                    out.unlink()
            stream._check_finite = checked
            off, on_ = min(times[False]), min(times[True])
            print(f"| {quant} | {off:.2f} s | {on_:.2f} s | {on_ / off:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
