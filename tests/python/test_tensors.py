"""ckpt.save / ckpt.load on one process: every dtype, views, values,
zero copies, the GIL, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import ckpt
import pytest
import torch
from conftest import bits

ALL_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.uint16,
    torch.int32,
    torch.uint32,
    torch.int64,
    torch.uint64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        return (raw % 2).to(torch.bool).reshape(shape)
    out = raw.view(dtype).reshape(shape)
    if dtype.is_floating_point:  # keep NaN payloads out of equality checks
        out = torch.where(torch.isnan(out.float()), torch.zeros((), dtype=dtype), out)
    return out


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_round_trips_bit_for_bit(tmp_path, dtype):
    src = {"t": random_bits((5, 7), dtype, 1), "v": random_bits((3,), dtype, 2)}
    ckpt.save(src, tmp_path / "c")
    dst = {k: torch.zeros_like(v) for k, v in src.items()}
    stats = ckpt.load(dst, tmp_path / "c")
    for k in src:
        assert torch.equal(bits(dst[k]), bits(src[k])), k
    assert stats.bytes_needed == sum(v.numel() * v.element_size() for v in src.values())
    info = ckpt.inspect(tmp_path / "c")
    assert info.tensors["t"].dtype == dtype and info.tensors["t"].shape == [5, 7]


def test_non_contiguous_sources_and_destinations_are_read_and_written_in_place(tmp_path):
    base = torch.arange(6 * 8, dtype=torch.float32).reshape(6, 8)
    src = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "narrow": base[:, 2:5],
        "expanded": torch.ones(3, 1).expand(3, 4),
    }
    ckpt.save(src, tmp_path / "c")
    holder = torch.zeros(8, 6)
    dst_t = holder.t()  # a [6, 8] view with strides (1, 6)
    big = torch.zeros(4, 10, dtype=torch.float32)
    dst = {
        "transposed": torch.zeros(6, 8).t(),
        "strided": big[::2, ::3].narrow(1, 0, 3)[:, :3],
        "narrow": torch.zeros(6, 3),
        "expanded": torch.zeros(3, 4),
    }
    dst["strided"] = torch.zeros(3, 3)
    dst["transposed"] = dst_t.t()  # [8, 6] view of `holder` transposed twice = holder itself
    out_view = torch.zeros(10, 10)[1:7:2, 2:5]  # a strided [3, 3] destination
    dst["strided"] = out_view
    ckpt.load(dst, tmp_path / "c")
    assert torch.equal(holder, base.t())  # filled through the view
    assert torch.equal(out_view, base[::2, 1::3])
    assert torch.equal(dst["narrow"], base[:, 2:5])
    assert torch.equal(dst["expanded"], torch.ones(3, 4))


def test_zero_dim_and_empty_tensors_and_nested_dicts_round_trip(tmp_path):
    src = {
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "nest": {"a": torch.tensor([1, 2]), "b": [torch.ones(2)]},
    }
    ckpt.save(src, tmp_path / "c")
    dst = {
        "scalar": torch.tensor(0.0),
        "empty": torch.ones(0, 3),
        "nest": {"a": torch.zeros(2, dtype=torch.int64), "b": [torch.zeros(2)]},
    }
    ckpt.load(dst, tmp_path / "c")
    assert dst["scalar"].item() == 2.5
    assert dst["nest"]["a"].tolist() == [1, 2] and dst["nest"]["b"][0].tolist() == [1.0, 1.0]
    assert set(ckpt.inspect(tmp_path / "c").tensors) == {"scalar", "empty", "nest.a", "nest.b.0"}


def test_non_tensor_values_are_kept_as_json_or_torch_bytes(tmp_path):
    src = {
        "w": torch.ones(2),
        "step": 7,
        "lr": 0.5,
        "name": "run",
        "cfg": {"betas": [0.9, 0.99]},
        "shape": torch.Size([2, 3]),
        "pair": (1, "a"),
    }
    ckpt.save(src, tmp_path / "c")
    info = ckpt.inspect(tmp_path / "c")
    assert info.values["step"] == "json" and info.values["cfg.betas"] == "json"
    assert info.values["shape"] == "bytes" and info.values["pair"] == "bytes"
    dst = {
        "w": torch.zeros(2),
        "step": 0,
        "lr": 0.0,
        "name": "",
        "cfg": {"betas": None},
        "shape": None,
        "pair": None,
    }
    ckpt.load(dst, tmp_path / "c")
    assert (dst["step"], dst["lr"], dst["name"], dst["cfg"]["betas"]) == (7, 0.5, "run", [0.9, 0.99])
    assert dst["shape"] == torch.Size([2, 3]) and dst["pair"] == (1, "a")


class Opaque:
    def __init__(self) -> None:
        self.x = 3

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.x == self.x


def test_pickled_objects_need_allow_pickle(tmp_path):
    ckpt.save({"obj": Opaque()}, tmp_path / "c")
    dst = {"obj": None}
    with pytest.raises(ckpt.InvalidArgumentError, match="value 'obj'.*allow_pickle=True"):
        ckpt.load(dst, tmp_path / "c")
    ckpt.load(dst, tmp_path / "c", allow_pickle=True)
    assert dst["obj"] == Opaque()


def test_loads_fill_the_callers_memory_without_replacing_it(tmp_path):
    src = {"w": torch.randn(256, 256)}
    ckpt.save(src, tmp_path / "c")
    dst = {"w": torch.zeros(256, 256)}
    before = dst["w"].data_ptr()
    ckpt.load(dst, tmp_path / "c")
    assert dst["w"].data_ptr() == before and torch.equal(dst["w"], src["w"])


RSS_SCRIPT = r"""
import sys, threading, time, torch, ckpt

def anon_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

peak = 0
stop = threading.Event()

def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, anon_kib())
        time.sleep(0.002)

t = torch.ones(256 << 20, dtype=torch.uint8)  # 256 MiB, touched
th = threading.Thread(target=sample)
th.start()
time.sleep(0.05)
base = anon_kib()
peak = base
ckpt.save({"t": t}, sys.argv[1])
save_peak = peak
t.zero_()
peak = anon_kib()
ckpt.load({"t": t}, sys.argv[1])
load_peak = peak
stop.set()
th.join()
assert int(t[12345]) == 1
print((save_peak - base) // 1024, (load_peak - base) // 1024)
"""


def test_saving_and_loading_a_large_tensor_does_not_copy_it(tmp_path):
    # Anonymous memory (not the page cache of the files) sampled while the
    # engine works: a copy of the tensor would add 256 MiB.
    r = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "c")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    save_mib, load_mib = map(int, r.stdout.split())
    assert save_mib < 64, f"save grew anonymous memory by {save_mib} MiB"
    assert load_mib < 64, f"load grew anonymous memory by {load_mib} MiB"


def test_the_gil_is_released_while_the_engine_writes(tmp_path):
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    th = threading.Thread(target=spin)
    th.start()
    try:
        t0 = time.monotonic()
        during = ticks
        ckpt.save({"t": torch.ones(96 << 20, dtype=torch.uint8)}, tmp_path / "c")
        elapsed = time.monotonic() - t0
        during = ticks - during
    finally:
        stop.set()
        th.join()
    # A held GIL would freeze the other thread for the whole save.
    assert during >= max(3, int(elapsed * 100)), (during, elapsed)


def test_errors_are_checkpoint_error_subclasses_named_after_status_codes(tmp_path):
    ckpt.save({"w": torch.ones(4)}, tmp_path / "c")
    with pytest.raises(ckpt.AlreadyExistsError, match="already exists"):
        ckpt.save({"w": torch.ones(4)}, tmp_path / "c")
    with pytest.raises(ckpt.InvalidArgumentError, match="'w'"):
        ckpt.load({"w": torch.zeros(5)}, tmp_path / "c")
    with pytest.raises(ckpt.InvalidArgumentError, match="'w'"):
        ckpt.load({"w": torch.zeros(4, dtype=torch.float64)}, tmp_path / "c")
    dst = {"w": torch.zeros(4, dtype=torch.float64)}
    ckpt.load(dst, tmp_path / "c", cast_floats=True)
    assert dst["w"].tolist() == [1.0] * 4
    with pytest.raises(ckpt.InvalidArgumentError, match=r"missing keys \(1\): absent"):
        ckpt.load({"w": torch.zeros(4), "absent": torch.zeros(1)}, tmp_path / "c")
    stats = ckpt.load({"w": torch.zeros(4), "absent": torch.zeros(1)}, tmp_path / "c", allow_missing=True)
    assert stats.missing_keys == ["absent"] and stats.unexpected_keys == []
    with pytest.raises(ckpt.InvalidArgumentError, match="meta device"):
        ckpt.save({"m": torch.empty(3, device="meta")}, tmp_path / "d")
    assert issubclass(ckpt.NotFoundError, ckpt.CheckpointError) and ckpt.DataLossError.code == "DataLoss"


def test_key_mapping_and_subsets(tmp_path):
    ckpt.save(
        {"model.layers.0.w": torch.ones(2), "model.layers.1.w": torch.full((2,), 2.0), "head": torch.ones(1)},
        tmp_path / "c",
    )
    dst = {"layers.0.w": torch.zeros(2), "layers.1.w": torch.zeros(2)}
    stats = ckpt.load(dst, tmp_path / "c", key_mapping={r"^model\.(.*)$": r"\1"})
    assert dst["layers.1.w"].tolist() == [2.0, 2.0] and stats.unexpected_keys == ["head"]
    with pytest.raises(ckpt.InvalidArgumentError, match="head"):
        ckpt.load(dict(dst), tmp_path / "c", key_mapping={r"^model\.(.*)$": r"\1"}, allow_unexpected=False)


def corrupt(path: str, offset_from_end: int) -> None:
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x40]))


def shard(path) -> str:
    return str(path / "shard-00001-model-00001-of-00001.safetensors")


def test_hostile_files_raise_checkpoint_errors_and_never_crash(tmp_path):
    ckpt.save({"w": torch.arange(64, dtype=torch.float32)}, tmp_path / "c")
    corrupt(shard(tmp_path / "c"), 5)  # a data bit
    with pytest.raises(ckpt.DataLossError, match="w"):
        ckpt.load({"w": torch.zeros(64)}, tmp_path / "c")
    with pytest.raises(ckpt.DataLossError):
        ckpt.verify(tmp_path / "c")
    ckpt.save({"w": torch.ones(8)}, tmp_path / "t")
    with open(shard(tmp_path / "t"), "r+b") as f:
        f.truncate(20)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load({"w": torch.zeros(8)}, tmp_path / "t")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "model.safetensors").write_bytes(b"\xff" * 8 + b"{garbage")
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load({"w": torch.zeros(8)}, tmp_path / "g")
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.safetensors.safe_open(tmp_path / "g" / "model.safetensors")
    with pytest.raises(ckpt.NotFoundError):
        ckpt.inspect(tmp_path / "nowhere")


def test_consolidate_writes_a_hugging_face_directory(tmp_path):
    src = {"model.embed.weight": torch.randn(16, 4).to(torch.bfloat16), "model.norm.weight": torch.randn(4)}
    ckpt.save(src, tmp_path / "c")
    stats = ckpt.consolidate(tmp_path / "c", tmp_path / "hf", max_shard_size=64)
    assert stats["files"] == 2 and stats["tensors"] == 2
    from safetensors.torch import load_file

    got = {}
    for name in sorted(os.listdir(tmp_path / "hf")):
        if name.endswith(".safetensors"):
            got.update(load_file(str(tmp_path / "hf" / name)))
    assert set(got) == set(src) and all(torch.equal(got[k], src[k]) for k in src)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()


def test_an_async_save_returns_before_the_write_and_surfaces_its_error_once(tmp_path):
    sd = {"w": torch.ones(1 << 20)}
    fut = ckpt.async_save(sd, tmp_path / "a")
    sd["w"].zero_()  # the staged copy is what gets written
    fut.result()
    dst = {"w": torch.zeros(1 << 20)}
    ckpt.load(dst, tmp_path / "a")
    assert bool((dst["w"] == 1).all())
    bad = ckpt.async_save({"w": torch.ones(4)}, tmp_path / "a")  # exists: fails in the background
    with pytest.raises(ckpt.AlreadyExistsError):
        bad.result()
    assert bad.done()


def test_resource_limits_turn_into_errors(tmp_path):
    # A save that cannot write its file (the process may not create files
    # past 1 MiB) raises IOError and publishes nothing.
    script = r"""
import resource, signal, sys, torch, ckpt
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    ckpt.save({"w": torch.ones(1 << 20)}, sys.argv[1])
except ckpt.IOError as e:
    print("IOError", e)
"""
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")], capture_output=True, text=True, timeout=120
    )
    assert r.stdout.startswith("IOError") and "shard-00001" in r.stdout, (r.stdout, r.stderr)
    assert not (tmp_path / "c").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".c.tmp")]


def test_values_json_cannot_hold_exactly_are_kept_as_bytes(tmp_path):
    deep = json_nest(70)
    src = {"w": torch.ones(1), "big": 2**70, "neg": -(2**64), "deep": deep, "ok": [1, 2.5, "x"]}
    ckpt.save(src, tmp_path / "c")
    info = ckpt.inspect(tmp_path / "c")
    assert info.values == {"big": "bytes", "neg": "bytes", "deep": "bytes", "ok": "json"}
    dst = {"w": torch.zeros(1), "big": 0, "neg": 0, "deep": None, "ok": None}
    ckpt.load(dst, tmp_path / "c")
    assert dst["big"] == 2**70 and type(dst["big"]) is int and dst["neg"] == -(2**64)
    assert dst["deep"] == deep and dst["ok"] == [1, 2.5, "x"]


def json_nest(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def test_lists_and_tuples_holding_tensors_are_flattened_and_filled_in_place(tmp_path):
    src = {
        "mixed": [torch.ones(2), 3, {"t": torch.full((2,), 2.0)}],
        "pair": (torch.ones(3), torch.zeros(1) + 5),
    }
    ckpt.save(src, tmp_path / "c")
    assert set(ckpt.inspect(tmp_path / "c").tensors) == {"mixed.0", "mixed.2.t", "pair.0", "pair.1"}
    a, b, c, d = torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(1)
    dst = {"mixed": [a, 0, {"t": b}], "pair": (c, d)}
    ckpt.load(dst, tmp_path / "c")
    assert dst["mixed"][0] is a and a.tolist() == [1.0, 1.0] and b.tolist() == [2.0, 2.0]
    assert dst["mixed"][1] == 3 and c.tolist() == [1.0] * 3 and d.item() == 5.0


def test_a_checkpoint_of_values_only_inspects_and_loads(tmp_path):
    ckpt.save({"step": 3, "name": "x"}, tmp_path / "c")
    info = ckpt.inspect(tmp_path / "c")
    assert info.tensors == {} and info.values == {"step": "json", "name": "json"}
    dst = {"step": 0, "name": ""}
    ckpt.load(dst, tmp_path / "c")
    assert dst == {"step": 3, "name": "x"}


def test_a_missing_value_is_reported_before_any_tensor_is_overwritten(tmp_path):
    ckpt.save({"w": torch.ones(4), "step": 1}, tmp_path / "c")
    dst = {"w": torch.zeros(4), "step": 0, "epoch": 0}
    with pytest.raises(ckpt.NotFoundError, match="no value 'epoch'"):
        ckpt.load(dst, tmp_path / "c")
    assert dst["w"].tolist() == [0.0] * 4 and dst["step"] == 0


def test_timeouts_must_be_finite_and_positive(tmp_path):
    for bad in (0, -1, float("inf"), float("nan"), 1e16):
        with pytest.raises(ckpt.InvalidArgumentError, match="timeout"):
            ckpt.save({"w": torch.ones(1)}, tmp_path / "c", timeout=bad)


def test_a_failed_async_save_keeps_its_error_and_the_next_save_still_runs(tmp_path):
    ckpt.save({"w": torch.ones(2)}, tmp_path / "taken")
    bad = ckpt.async_save({"w": torch.ones(2)}, tmp_path / "taken")
    good = ckpt.async_save({"w": torch.full((2,), 3.0)}, tmp_path / "free")  # queued after the failure
    for _ in range(2):
        with pytest.raises(ckpt.AlreadyExistsError):
            bad.result()
    good.result()
    dst = {"w": torch.zeros(2)}
    ckpt.load(dst, tmp_path / "free")
    assert dst["w"].tolist() == [3.0, 3.0]
