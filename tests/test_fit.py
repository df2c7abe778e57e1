"""The planner and `q35 fit`: memory against what llama.cpp allocates, sizes against the quantizer and
published files, layouts on simulated machines, and the plan applied by the real loader."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import gguf_for
from test_fuzz_gguf import copy_with

from q35local.base.units import GiB, MiB
from q35local.cli import main
from q35local.engine import llamalog
from q35local.engine.calibrate import allocations
from q35local.engine.loader import load_model, model_params
from q35local.machine.hardware import PROFILES
from q35local.machine.probe import probe
from q35local.machine.spec import Device, Hardware
from q35local.model.official import OFFICIAL, PUBLISHED_PARAMS, official_profile, spec_params
from q35local.model.profile import EXPERT_STEMS, from_checkpoint, from_gguf
from q35local.planning.planner import (
    SNAPSHOT_CAP,
    SNAPSHOTS,
    Plan,
    Settings,
    experts_regex,
    plan,
    snapshot_budget,
)
from q35local.planning.speed import estimate


def q35(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "q35local.cli", *args], capture_output=True, text=True)


# --- memory: the plan against llama.cpp's own allocations -------------------------------------------


@pytest.mark.parametrize("which", ["moe_ckpt", "small_moe_ckpt"])
@pytest.mark.parametrize("n_ctx", [2048, 32768])
def test_planned_memory_matches_llama_cpp(request: pytest.FixtureRequest, which: str, n_ctx: int) -> None:
    path = gguf_for(request.getfixturevalue(which), "Q8_0")
    m = from_gguf(path)
    p = plan(m, probe(), Settings(n_ctx=n_ctx, mmproj=False))
    assert p.fits and p.verdict == "fits in RAM"
    got = allocations(path, p, n_ctx)
    host = p.devices[-1]
    assert host.weights == pytest.approx(got["model"], rel=0.002)  # exact up to the log's 0.01 MiB
    assert host.kv == pytest.approx(got["KV"], rel=0.01)
    assert host.recurrent == pytest.approx(got["RS"], abs=0.01 * MiB)
    # what llama.cpp allocates; the snapshots are q35's own (engine/snapshots.py), planned beside them
    assert host.planned_bytes - host.snapshots == pytest.approx(sum(got.values()), rel=0.05)
    assert host.snapshots == snapshot_budget(m) == min(SNAPSHOT_CAP, SNAPSHOTS * host.recurrent)


def test_conversation_snapshots_are_planned_per_sequence_within_their_cap() -> None:
    for name in ("Qwen3.5-0.8B", "Qwen3.5-397B-A17B"):
        m = official_profile(name, "Q4_K_M")
        hw = PROFILES["mac-studio-m3-ultra-512"]
        one = plan(m, hw, Settings(n_seq=1)).devices[-1]
        four = plan(m, hw, Settings(n_seq=4)).devices[-1]
        assert 0 < one.snapshots <= SNAPSHOT_CAP and four.snapshots == 4 * one.snapshots
        assert one.planned_bytes - one.snapshots == (
            one.weights + one.kv + one.recurrent + one.compute + one.mmproj
        )
    assert one.snapshots == SNAPSHOT_CAP  # the 397B's 32 snapshots would be over the cap


def test_kv_only_for_full_attention_layers(moe_ckpt: Path) -> None:
    m = from_gguf(gguf_for(moe_ckpt, "Q8_0"))
    assert m.n_full == 1 and sum(m.recurrent) == 3  # 4 layers, interval 4
    assert m.kv_bytes(4096) == 4096 * m.n_head_kv * (m.key_length + m.value_length) * 2
    assert m.kv_bytes(4096, kv_type="q8_0") < m.kv_bytes(4096) / 1.8


def test_predicted_size_equals_quantizer_output(small_moe_ckpt: Path) -> None:
    for quant in ("Q4_K_XL", "Q8_0"):
        predicted = from_checkpoint(small_moe_ckpt, quant)
        written = gguf_for(small_moe_ckpt, quant)
        assert predicted.file_bytes == pytest.approx(written.stat().st_size, rel=0.005)
        assert predicted.weights == from_gguf(written).weights


# --- the official table -------------------------------------------------------------------------------


def test_official_configs_reproduce_published_parameter_counts() -> None:
    for name, spec in OFFICIAL.items():
        assert spec_params(spec) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize(
    ("name", "quant", "published"),
    [
        ("Qwen3.5-397B-A17B", "Q8_0", 421_507_365_376),
        ("Qwen3.5-35B-A3B", "Q8_0", 36_903_139_968),
        ("Qwen3.5-35B-A3B", "Q4_K_M", 22_016_023_168),
        ("Qwen3.5-9B", "Q4_K_M", 5_680_522_464),
    ],
)
def test_official_sizes_within_3_percent(name: str, quant: str, published: int) -> None:
    assert official_profile(name, quant).file_bytes == pytest.approx(published, rel=0.03)


def test_official_context_costs() -> None:
    big = official_profile("Qwen3.5-397B-A17B", "Q8_0")
    small = official_profile("35B-A3B", "Q8_0")
    assert big.kv_bytes_per_token() == 30 * 1024 and small.kv_bytes_per_token() == 20 * 1024
    assert small.recurrent_bytes() / MiB == pytest.approx(62.8, abs=0.05)
    assert small.kv_bytes(131072, kv_type="q4_0") / GiB == pytest.approx(0.70, abs=0.01)


# --- simulated machines ---------------------------------------------------------------------------------


def _check_invariants(p: Plan, hw: Hardware) -> None:
    """Never over any device; what every token uses sits on the GPUs before any expert does."""
    if not p.fits:
        return
    for d, dev in zip(p.devices, hw.devices, strict=False):
        assert d.planned_bytes + p.settings.margin <= dev.usable_bytes
    host = p.devices[-1]
    total = host.planned_bytes + (sum(d.planned_bytes for d in p.devices[:-1]) if hw.unified else 0)
    assert total + p.settings.margin <= hw.usable_ram()
    if hw.devices and p.cpu_expert_layers:
        assert not p.cpu_layers  # dense parts all on GPU before experts are
        gpu_layers = sorted(il for d in p.devices[:-1] for il in d.layers)
        assert gpu_layers == list(range(len(gpu_layers)))


@pytest.mark.parametrize("hw_name", list(PROFILES))
def test_plans_never_exceed_any_device(hw_name: str) -> None:
    hw = PROFILES[hw_name]
    for name, quant in (
        ("Qwen3.5-397B-A17B", "Q2_K_XL"),
        ("Qwen3.5-35B-A3B", "Q4_K_XL"),
        ("Qwen3.5-27B", "Q8_0"),
    ):
        m = official_profile(name, quant)
        for ctx in (8192, 131072):
            _check_invariants(plan(m, hw, Settings(n_ctx=ctx)), hw)


def test_397b_on_a_512gb_mac_studio() -> None:
    hw = PROFILES["mac-studio-m3-ultra-512"]
    m = official_profile("Qwen3.5-397B-A17B", "Q4_K_XL")
    p = plan(m, hw, Settings(n_ctx=32768))
    # 247.7 GB of weights under the 384 GiB default working set: all 60 layers, experts and LM head on Metal
    assert p.fits and p.verdict == "fits on GPU"
    assert p.devices[0].layers == list(range(60)) and p.devices[0].expert_layers == list(range(60))
    assert p.n_gpu_layers == 61 and not p.overrides
    # Q8_0 (428.5 GB) overflows the default cap: a couple of expert layers spill, and raising the cap helps
    p8 = plan(official_profile("Qwen3.5-397B-A17B", "Q8_0"), hw, Settings(n_ctx=32768))
    assert p8.fits and p8.verdict == "fits with experts in RAM" and 0 < len(p8.cpu_expert_layers) < 5


def test_397b_on_a_256gb_mac_studio() -> None:
    hw = PROFILES["mac-studio-m3-ultra-256"]
    p2 = plan(official_profile("Qwen3.5-397B-A17B", "Q2_K_XL"), hw, Settings(n_ctx=32768))
    assert p2.fits and p2.verdict == "fits on GPU"  # 149 GB under the 192 GiB cap
    m4 = official_profile("Qwen3.5-397B-A17B", "Q4_K_XL")
    p4 = plan(m4, hw, Settings(n_ctx=32768))
    assert not p4.fits and any("RAM" in r for r in p4.reasons)  # 248 GB in 256 GiB of unified memory
    from q35local.commands.fit import suggestions

    sugg = suggestions(m4, hw, Settings(n_ctx=32768), p4)
    assert any("--quant Q3_K_XL" in s for s in sugg)


def test_397b_on_two_5090s_with_256gb() -> None:
    hw = PROFILES["2x5090-256"]
    m = official_profile("Qwen3.5-397B-A17B", "Q4_K_XL")
    p = plan(m, hw, Settings(n_ctx=32768))
    assert p.fits and p.verdict == "fits with experts in RAM"
    g0, g1, host = p.devices
    # every layer's attention/DeltaNet/shared expert on a GPU, split in two contiguous blocks
    assert g0.layers + g1.layers == list(range(60)) and g0.layers and g1.layers
    # experts balanced across the two cards (not all on GPU0, llama.cpp issue 15136)
    assert abs(len(g0.expert_layers) - len(g1.expert_layers)) <= 1 and g0.expert_layers
    assert sorted(p.cpu_expert_layers + g0.expert_layers + g1.expert_layers) == list(range(60))
    assert p.tensor_split == [len(g0.layers), len(g1.layers) + 1] and p.n_gpu_layers == 61
    assert host.weights > 150 * GiB and host.planned_bytes + GiB < hw.usable_ram()
    rx = p.overrides[0][0]
    import re

    hit = {
        int(n.split(".")[1]) for n in (f"blk.{i}.ffn_up_exps.weight" for i in range(60)) if re.search(rx, n)
    }
    assert hit == set(p.cpu_expert_layers)
    assert not re.search(rx, "blk.1.ffn_up_shexp.weight")


def test_cpu_only_model_too_big_says_so() -> None:
    hw = PROFILES["cpu-desktop-64"]
    p = plan(official_profile("Qwen3.5-122B-A10B", "Q4_K_XL"), hw, Settings())
    assert not p.fits and "mmap would page" in p.reasons[0]


def test_dense_model_keeps_first_layers_on_cpu_when_gpu_is_small() -> None:
    hw = PROFILES["rtx4090-64"]
    p = plan(official_profile("Qwen3.5-27B", "Q8_0"), hw, Settings(n_ctx=8192))
    assert p.fits and p.verdict == "fits with layers on CPU"
    assert p.cpu_layers == list(range(len(p.cpu_layers))) and p.cpu_layers
    assert p.n_gpu_layers == 64 - len(p.cpu_layers) + 1


def test_gpu_reported_with_less_free_memory_gets_less() -> None:
    hw = PROFILES["2x5090-256"]
    busy = replace(hw.devices[0], free_bytes=20 * GiB)
    p = plan(
        official_profile("Qwen3.5-122B-A10B", "Q4_K_XL"),
        replace(hw, devices=(busy, hw.devices[1])),
        Settings(),
    )
    assert p.devices[0].planned_bytes + GiB <= 20 * GiB
    assert p.devices[0].planned_bytes < p.devices[1].planned_bytes


def test_estimate_reports_assumptions_and_orders_sensibly() -> None:
    m = official_profile("Qwen3.5-35B-A3B", "Q4_K_XL")
    fast = estimate(m, PROFILES["rtx5090-64"], plan(m, PROFILES["rtx5090-64"], Settings()))
    slow = estimate(m, PROFILES["cpu-desktop-64"], plan(m, PROFILES["cpu-desktop-64"], Settings()))
    assert fast.decode_tps > 3 * slow.decode_tps > 0 and fast.assumptions and slow.assumptions


def test_unknown_gpu_bandwidth_is_labelled() -> None:
    hw = Hardware(
        "x", PROFILES["rtx4090-64"].cpu, 64 * GiB, None, 80.0, (Device("Mystery GPU", "cuda", 48 * GiB),)
    )
    m = official_profile("Qwen3.5-9B", "Q4_K_XL")
    e = estimate(m, hw, plan(m, hw, Settings()))
    assert any("bandwidth unknown" in a for a in e.assumptions)


# --- the loader applies the plan ---------------------------------------------------------------------


def test_loader_keeps_planned_experts_in_ram(moe_ckpt: Path) -> None:
    path = gguf_for(moe_ckpt, "Q8_0")
    m = from_gguf(path)
    gpu = Device("GPU0", "cuda", 1 << 40)
    hw = Hardware("sim", PROFILES["rtx4090-64"].cpu, 64 * GiB, None, 80.0, (gpu,))
    p = plan(m, hw, Settings())
    p.cpu_expert_layers = [0, 2]  # as if the GPU were full after layer 0 and 2's experts
    over = re.compile(experts_regex([0, 2]))
    names = [f"blk.{i}.{s}.weight" for i in range(4) for s in EXPERT_STEMS]
    assert [n for n in names if over.search(n)] == [n for n in names if n.startswith(("blk.0.", "blk.2."))]
    assert not over.search("blk.0.ffn_up_shexp.weight") and not over.search("blk.12.ffn_up_exps.weight")
    llamalog.capture()
    mark = llamalog.mark()
    model = load_model(path, model_params(p))
    from llama_cpp import llama_cpp

    llama_cpp.llama_model_free(model)
    moved = sorted(
        line.split()[1] for line in llamalog.since(mark) if "buffer type overridden to CPU" in line
    )
    assert moved == [f"blk.{i}.ffn_{k}_exps.weight" for i in (0, 2) for k in ("down", "gate", "up")]


# --- the command -------------------------------------------------------------------------------------------


def test_fit_json_on_a_gguf(moe_ckpt: Path) -> None:
    r = q35("fit", str(gguf_for(moe_ckpt, "Q8_0")), "--json", "--ctx", "4096")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["fits"] is True and d["devices"][0]["kind"] == "cpu"
    for k in ("weights_bytes", "kv_bytes", "recurrent_bytes", "compute_bytes", "total_bytes"):
        assert d["memory"][k] >= 0
    assert {"n_gpu_layers", "tensor_split", "overrides"} <= set(d["plan"])
    assert d["estimate"]["decode_tps"] > 0 and d["estimate"]["prefill_tps"] > 0
    assert d["devices"][0]["planned_bytes"] <= d["devices"][0]["total_bytes"]


def test_fit_official_name_on_a_profile_screen() -> None:
    r = q35("fit", "Qwen3.5-397B-A17B", "--quant", "Q4_K_XL", "--hardware", "2x5090-256", "--ctx", "32768")
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "fits with experts in RAM" in out and "llama-server" in out and "--tensor-split" in out
    assert "-ot" in out and "q35 chat" in out


def test_fit_does_not_fit_exit_code_and_suggestions() -> None:
    r = q35(
        "fit",
        "Qwen3.5-397B-A17B",
        "--quant",
        "Q4_K_XL",
        "--hardware",
        "mac-studio-m3-ultra-256",
        "--ctx",
        "32768",
    )
    assert r.returncode == 3
    out = " ".join(r.stdout.split())  # rich wraps at 80 columns wherever the sizes end
    assert "does not fit" in out and "--quant" in out


def test_fit_best_ranks_what_fits() -> None:
    r = q35("fit", "--best", "--hardware", "rtx4090-64", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["ranked"]
    assert rows and all(x["verdict"].startswith("fits") for x in rows)
    assert "Qwen3.5-397B-A17B" not in {x["model"] for x in rows}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nope.gguf"], "nope.gguf: no such GGUF"),
        (["Qwen3.5-9B", "--hardware", "nowhere-9000"], "unknown hardware"),
    ],
)
def test_fit_bad_input_is_one_line(args: list[str], needle: str) -> None:
    r = q35("fit", *args)
    assert r.returncode == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_fit_context_out_of_range_is_a_usage_error() -> None:
    r = q35("fit", "Qwen3.5-9B", "--ctx", "10")
    assert r.returncode == 2 and "--ctx" in r.stderr and "≥ 256" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_fit_corrupt_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    r = q35("fit", str(bad))
    assert r.returncode == 1 and "bad.gguf" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_llama_cpp_device_memory_wins() -> None:
    from q35local.machine.ggml_devices import GgmlDevice
    from q35local.machine.probe import merge_llama_devices

    mac = PROFILES["mac-studio-m3-ultra-512"]
    metal = GgmlDevice("MTL0", "Apple M3 Ultra", "GPU", 400 * GiB, 420 * GiB, 0)
    merged = merge_llama_devices(mac, [metal, GgmlDevice("CPU", "cpu", "CPU", 1, 1, 0)])
    assert merged.devices[0].total_bytes == 420 * GiB and merged.devices[0].usable_bytes == 400 * GiB
    pc = PROFILES["2x5090-256"]
    cuda = [GgmlDevice(f"CUDA{i}", "RTX 5090", "GPU", (20 + i) * GiB, 32 * GiB, 0) for i in range(2)]
    got = merge_llama_devices(pc, cuda)
    assert [d.usable_bytes for d in got.devices] == [20 * GiB, 21 * GiB]
    assert merge_llama_devices(pc, []) == pc


def test_cpu_only_paging_estimate_is_slower_and_labelled() -> None:
    hw = PROFILES["cpu-desktop-64"]
    m = official_profile("Qwen3.5-122B-A10B", "Q4_K_XL")
    e = estimate(m, hw, plan(m, hw, Settings()))
    big_ram = replace(hw, ram_total=512 * GiB)
    e2 = estimate(m, big_ram, plan(m, big_ram, Settings()))
    assert any("mmap pages" in a for a in e.assumptions) and e.decode_tps < e2.decode_tps / 2


def test_calibrate_measures_and_is_reused(moe_ckpt: Path, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "Q35_CACHE": str(tmp_path)}
    path = str(gguf_for(moe_ckpt, "Q8_0"))
    run = [sys.executable, "-m", "q35local.cli", "fit", path, "--json"]
    r = subprocess.run([*run, "--calibrate"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["estimate"]["calibrated"] is True
    saved = json.loads((tmp_path / "q35local" / "calibration.json").read_text())["machines"]
    (factors,) = saved.values()
    assert factors["decode"] > 0 and factors["prefill"] > 0
    again = json.loads(subprocess.run(run, capture_output=True, text=True, env=env).stdout)
    assert again["estimate"]["calibrated"] is True


def test_split_gguf_profile_equals_the_single_file(small_moe_ckpt: Path, tmp_path: Path) -> None:
    from quantize.convert import ConvertOptions, convert

    out = tmp_path / "split.gguf"
    convert(ConvertOptions(checkpoint=small_moe_ckpt, output=out, quant="Q8_0", split_max_size=4 << 20))
    shards = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(shards) > 1
    whole = from_gguf(gguf_for(small_moe_ckpt, "Q8_0"))
    for shard in (shards[0], shards[-1]):  # any shard names the whole model
        m = from_gguf(shard)
        assert m.weights == whole.weights and m.layers == whole.layers
        assert m.file_bytes == sum(p.stat().st_size for p in shards)
    shards[1].unlink()
    r = q35("fit", str(shards[0]))
    assert r.returncode == 1 and shards[1].name in r.stderr


@pytest.fixture(scope="module")
def split_shards(small_moe_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from quantize.convert import ConvertOptions, convert

    d = tmp_path_factory.mktemp("split")
    convert(
        ConvertOptions(checkpoint=small_moe_ckpt, output=d / "s.gguf", quant="Q8_0", split_max_size=4 << 20)
    )
    shards = sorted(d.glob("s-*-of-*.gguf"))
    assert len(shards) >= 3
    return shards


def _copy_split(shards: list[Path], into: Path) -> list[Path]:
    into.mkdir()
    out = [into / p.name for p in shards]
    for a, b in zip(shards, out, strict=True):
        shutil.copyfile(a, b)
    return out


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_split_every_shard_is_checked(split_shards: list[Path], tmp_path: Path, capsys, which: str) -> None:
    """A shard whose tensor data is cut short was planned as if whole, whichever shard it was."""
    shards = _copy_split(split_shards, tmp_path / "s")
    victim = {"first": shards[0], "middle": shards[1], "last": shards[-1]}[which]
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size - 4096)
    assert main(["fit", str(shards[0]), "--hardware", "cpu-desktop-64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"q35: error: {victim}: truncated") and "\n" not in err, err


def test_split_shard_renamed_alone(split_shards: list[Path], tmp_path: Path, capsys) -> None:
    """Shard 1 of 3 under a plain name was planned as the whole model (a third of it)."""
    alone = tmp_path / "model.gguf"
    shutil.copyfile(split_shards[0], alone)
    assert main(["fit", str(alone), "--hardware", "cpu-desktop-64"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{alone}: is shard 1 of a {len(split_shards)}-file split model" in err and "\n" not in err, err


def test_split_shards_that_do_not_belong_together(split_shards: list[Path], tmp_path: Path, capsys) -> None:
    shards = _copy_split(split_shards, tmp_path / "s")
    copy_with(split_shards[1], shards[1], values={"split.no": ("<H", 0)})  # says it is the first
    assert main(["fit", str(shards[0]), "--hardware", "cpu-desktop-64"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{shards[1]}: its header says shard 1 of {len(shards)}, its name says 2 of" in err, err
    copy_with(split_shards[1], shards[1])
    copy_with(split_shards[0], shards[0], values={"split.tensors.count": ("<i", 5)})
    assert main(["fit", str(shards[0]), "--hardware", "cpu-desktop-64"]) == 1
    err = capsys.readouterr().err.strip()
    assert "split.tensors.count is 5" in err and "\n" not in err, err


def test_fit_on_a_checkpoint_folder(small_moe_ckpt: Path) -> None:
    r = q35("fit", str(small_moe_ckpt), "--quant", "Q4_K_XL", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    written = gguf_for(small_moe_ckpt, "Q4_K_XL").stat().st_size
    assert d["model"]["file_bytes"] == pytest.approx(written, rel=0.005)
    assert d["commands"]["make"].startswith("q35 quantize " + str(small_moe_ckpt))


@pytest.mark.parametrize("hw", ["8xh100-2048", "mac-studio-m3-ultra-512", "2x5090-256"])
def test_device_table_reads_whole_at_80_columns(hw: str) -> None:
    import os

    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "q35local.cli",
            "fit",
            "Qwen3.5-397B-A17B",
            "--quant",
            "Q4_K_XL",
            "--hardware",
            hw,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = r.stdout.splitlines()
    head = next(line for line in lines if line.startswith("device"))
    assert head.split() == [
        "device",
        "total",
        "usable",
        "weights",
        "KV",
        "state",
        "compute",
        "mmproj",
        "planned",
    ]
    assert "…" not in r.stdout and max(map(len, lines)) <= 80
    rows = lines[lines.index(head) + 2 :]
    assert rows[0].split()[-1].endswith("G")  # a device row holds name and every number on one line


def test_fit_on_this_machine_names_the_llama_cpp_build(moe_ckpt: Path) -> None:
    r = q35("fit", str(gguf_for(moe_ckpt, "Q8_0")))
    assert "CPU features it uses:" in r.stdout and "llama.cpp build:" in r.stdout
    data = json.loads(q35("fit", str(gguf_for(moe_ckpt, "Q8_0")), "--json").stdout)
    assert any(line.startswith("CPU features it uses:") for line in data["llama_build"])
