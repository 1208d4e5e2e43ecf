"""Archives written by real torch.save, read by the ckpt binary bit-exactly.

Usage: torch_interop.py CKPT_BINARY
Exits 77 (skipped) when torch is not importable (Debian: python3-torch).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError:
    print("SKIPPED: python3-torch is not installed; real-archive interop not checked")
    sys.exit(77)

CKPT = sys.argv[1]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def raw(t):
    """Row-major little-endian bytes of a tensor, as safetensors stores them."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def read_safetensors_dir(d):
    out = {}
    for name in sorted(os.listdir(d)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(d, name), "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        base = 8 + n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            b, e = info["data_offsets"]
            out[key] = (info["dtype"], info["shape"], blob[base + b:base + e])
    return out


def run(*args):
    p = subprocess.run([CKPT, *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


ST_DTYPE = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL", torch.complex64: "C64"}

torch.manual_seed(0)
base = torch.randn(6, 8)
linear = torch.nn.Linear(8, 4)
sd = {
    "f32": torch.randn(3, 5),
    "f64": torch.randn(4, dtype=torch.float64),
    "f16": torch.randn(2, 3).half(),
    "bf16": torch.randn(7, 3).bfloat16(),
    "i64": torch.arange(-5, 5, dtype=torch.int64),
    "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    "i16": torch.tensor([-3, 4], dtype=torch.int16),
    "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
    "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True, True]),
    "c64": torch.randn(3, dtype=torch.complex64),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 4),
    "base": base,
    "tied": base,                       # the same storage twice
    "rows": base[2:5],                  # a view with an offset
    "transposed": base.t(),             # non-contiguous
    "strided": base[:, ::3],            # a step slice
    "param": torch.nn.Parameter(torch.randn(2, 2)),
}
sd.update({"linear." + k: v for k, v in linear.state_dict().items()})  # carries _metadata

with tempfile.TemporaryDirectory() as tmp:
    # One file, the default (zip) format.
    model = os.path.join(tmp, "single")
    os.makedirs(model)
    path = os.path.join(model, "pytorch_model.bin")
    torch.save(sd, path)
    code, out = run("inspect", "--json", path)
    check(code == 0, "inspect single: " + out)
    if code == 0:
        names = {t["name"] for t in json.loads(out)["tensors"]}
        check(names == set(sd), "inspect lists every tensor: %s" % sorted(set(sd) ^ names))
    code, out = run("verify", path)
    check(code == 0, "verify single: " + out)
    code, out = run("convert", model, os.path.join(tmp, "single_out"))
    check(code == 0, "convert single: " + out)
    code, out = run("verify", os.path.join(tmp, "single_out"))
    check(code == 0, "verify converted: " + out)
    got = read_safetensors_dir(os.path.join(tmp, "single_out"))
    for k, t in sd.items():
        if k not in got:
            check(False, "converted output lacks " + k)
            continue
        dtype, shape, data = got[k]
        check(dtype == ST_DTYPE[t.dtype], "%s dtype %s" % (k, dtype))
        check(shape == list(t.shape), "%s shape %s vs %s" % (k, shape, list(t.shape)))
        check(data == raw(t), "%s bytes differ" % k)

    # Shards with an index, as transformers writes them.
    sharded = os.path.join(tmp, "sharded")
    os.makedirs(sharded)
    keys = sorted(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        name = "pytorch_model-%05d-of-00002.bin" % (i + 1)
        torch.save({k: sd[k] for k in part}, os.path.join(sharded, name))
        weight_map.update({k: name for k in part})
    with open(os.path.join(sharded, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    with open(os.path.join(sharded, "config.json"), "w") as f:
        f.write('{"model_type": "test"}')
    code, out = run("convert", "--max-shard-size", "2000", sharded, os.path.join(tmp, "sharded_out"))
    check(code == 0, "convert sharded: " + out)
    got = read_safetensors_dir(os.path.join(tmp, "sharded_out"))
    check(set(got) == set(sd), "sharded conversion holds every tensor")
    for k, t in sd.items():
        check(k in got and got[k][2] == raw(t), "sharded %s bytes" % k)
    check(os.path.exists(os.path.join(tmp, "sharded_out", "config.json")), "config.json copied")

    # Formats ckpt refuses, by name.
    legacy = os.path.join(tmp, "legacy.bin")
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    code, out = run("inspect", legacy)
    check(code == 1 and "legacy torch.save stream" in out, "legacy refused: " + out)
    scripted = os.path.join(tmp, "scripted.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    code, out = run("inspect", scripted)
    check(code == 1 and "TorchScript" in out, "TorchScript refused: " + out)

print("torch %s: %s" % (torch.__version__, "FAILED %d checks" % len(failures) if failures else "all checks passed"))
sys.exit(1 if failures else 0)
