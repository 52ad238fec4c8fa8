"""Pickle files for sdhost's restricted unpickler tests (host/tests/integration/pickle_safety.rs).

    pickle_corpus.py hostile DIR
        Hostile and malformed pickles in DIR, and DIR/manifest.json: each file with the words
        its refusal must contain. Every payload would create DIR/PWNED* if it ever ran.
    pickle_corpus.py convert MODEL.safetensors DIR
        The tiny model as A1111 users have it in pickles: zip.ckpt (current torch, Lightning
        wrapper with a ModelCheckpoint callback, numpy scalar and array, set, torch.Size, a Parameter,
        strided and offset views), legacy.ckpt (pre-1.6 format, old CLIP key names),
        fp16.ckpt + fp16.safetensors, and bigendian.ckpt (byteorder "big").

Nothing here needs pytorch_lightning: its class is a stand-in whose module path is set to
Lightning's, which is all a pickle records.
"""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file


# ---------------------------------------------------------------- hostile corpus


def hostile(d):
    manifest = {}
    touch = lambda name: "touch " + os.path.join(d, "PWNED-" + name)

    def put(name, data, *expect):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        manifest[name] = list(expect)

    def reducer(fn, *args):
        class Payload:
            def __reduce__(self):
                return (fn, args)

        return Payload()

    payloads = {
        "system": (reducer(os.system, touch("system")), ["system"]),
        "eval": (reducer(eval, f"__import__('os').system({touch('eval')!r})"), ["eval`"]),
        "exec": (reducer(exec, f"import os; os.system({touch('exec')!r})"), ["exec`"]),
        "popen": (reducer(subprocess.Popen, ["touch", os.path.join(d, "PWNED-popen")]), ["Popen`"]),
        "getattr": (reducer(getattr, os, "system"), ["getattr`"]),
    }
    # Each payload inside a state dict, saved by torch in the zip format and the legacy one.
    for name, (payload, expect) in payloads.items():
        if name == "getattr":
            continue  # a module object cannot be pickled; hand-written below
        obj = {"state_dict": {"model.w": torch.ones(2) * 0.5, "evil": payload}}
        buf = io.BytesIO()
        torch.save(obj, buf)
        put(f"{name}.ckpt", buf.getvalue(), "refused", *expect)
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
        put(f"{name}-legacy.ckpt", buf.getvalue(), "refused", *expect)
    # Raw pickles in every protocol (the legacy path reads them first).
    for protocol in range(6):
        data = pickle.dumps({"w": payloads["system"][0]}, protocol=protocol)
        put(f"system-protocol{protocol}.pt", data, "refused", "system")
    for protocol in (2, 4, 5):
        buf = io.BytesIO()
        torch.save({"w": payloads["popen"][0]}, buf, pickle_protocol=protocol)
        put(f"popen-zip-protocol{protocol}.pt", buf.getvalue(), "refused", "Popen`")

    cmd = touch("hand").encode()
    # builtins.getattr(builtins.__import__('os'), 'system')('touch ...'): a REDUCE chain.
    put(
        "getattr-chain.pt",
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R"
        b"X\x06\x00\x00\x00system\x86RX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R.",
        "refused",
        "getattr`",
    )
    # Protocol 0 INST and OBJ of os.system.
    put("inst.pt", b"(S'" + cmd + b"'\nios\nsystem\n.", "refused", "os.system")
    put("obj.pt", b"(cos\nsystem\nS'" + cmd + b"'\no.", "refused", "os.system")
    # OBJ/INST of an allowed global that may only be referenced.
    put("obj-storage.pt", b"\x80\x02(ctorch\nFloatStorage\nK\x04o.", "refused", "torch.FloatStorage")
    put("inst-float32.pt", b"(itorch\nfloat32\n.", "refused", "torch.float32")
    # A nested REDUCE: calling the result of an allowed call.
    put(
        "nested-reduce.pt",
        b"\x80\x02ccollections\nOrderedDict\n)R)R.",
        "refused",
        "calling a dict",
    )
    # A GLOBAL smuggled inside an allowed container (an OrderedDict's item).
    put(
        "smuggled.pt",
        b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00wcposix\nsystem\nX"
        + struct.pack("<I", len(cmd)) + cmd + b"\x85Ru.",
        "refused",
        "posix.system",
    )
    # BUILD on a class (setting attributes of a global) and on a list.
    put("build-global.pt", b"\x80\x02ccollections\nOrderedDict\n}b.", "refused", "BUILD", "global")
    put("build-list.pt", b"\x80\x02]}b.", "refused", "BUILD", "list")
    # Unknown globals through STACK_GLOBAL and an extension-registry code.
    put(
        "stack-global.pt",
        b"\x80\x04\x8c\x02os\x8c\x06system\x93.",
        "refused",
        "os.system",
    )
    put("ext.pt", b"\x80\x02\x82\x01.", "refused", "extension")
    # A Lightning checkpoint with a hyper-parameter object outside the allow-list.
    ns = types.SimpleNamespace(lr=1e-4)
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": ns}, buf)
    put("hparams.ckpt", buf.getvalue(), "refused", "types.SimpleNamespace")

    # Malformed files: clean errors, no panic, no huge allocation.
    put("deep.pt", b"\x80\x02)" + b"\x85" * 100000 + b".", "nested deeper")
    put("cycle.pt", b"\x80\x02]q\x00h\x00a.", "inside itself")
    big = b"x" * (4 << 20)
    put(
        "memo-bomb.pt",
        b"\x80\x02]q\x00(B" + struct.pack("<I", len(big)) + big + b"q\x01" + b"h\x01" * 200 + b"e.",
        "copies",
    )
    bytes_op = b"B" + struct.pack("<I", len(big)) + big
    put("put-loop.pt", b"\x80\x02" + bytes_op + b"q\x00" * 200 + b".", "copies")
    put(
        "set-copies.pt",
        b"\x80\x02]" + bytes_op + b"aq\x00" + b"c__builtin__\nset\nh\x00\x85R0" * 200 + b".",
        "copies",
    )
    put("stack-flood.pt", b"\x80\x02" + b"N" * (1 << 21) + b".", "stack")
    put("container-flood.pt", b"\x80\x02" + b"]0" * (5 << 20) + b"N.", "containers")
    put("huge-string.pt", b"\x80\x02X\xff\xff\xff\x7f", "truncated")
    put("huge-bytes8.pt", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"ab", "truncated")
    put("truncated-stream.pt", b"\x80\x02}q\x00(X\x01\x00\x00\x00a", "truncated")
    put("not-a-pickle.ckpt", b"hello, this is not a model", "not a PyTorch file")
    put("empty-dict.pt", pickle.dumps({}, protocol=2), "not a PyTorch file")
    put("unknown-opcode.pt", b"\x80\x02\xff.", "unknown opcode")

    # Memo, mark and length-claim tricks.
    put("memo-missing.pt", b"\x80\x02h\x05.", "unknown memo entry 5")
    put("memo-missing-long.pt", b"\x80\x02j\xff\xff\xff\x7f.", "unknown memo entry")
    put("mark-flood.pt", b"\x80\x02" + b"(" * ((1 << 20) + 16) + b"N.", "marks")
    put("huge-long4.pt", b"\x80\x02\x8b\xff\xff\xff\xff\x01", "truncated")
    put("huge-unicode8.pt", b"\x80\x04\x8d" + struct.pack("<Q", 1 << 62) + b"ab", "truncated")
    put("huge-bytearray8.pt", b"\x80\x05\x96" + struct.pack("<Q", (1 << 64) - 1) + b"ab", "truncated")
    # Items bombs: every container stays alive until the pickle ends, so copying a memoised
    # half-million-pair dict through OrderedDict 200 times, or appending millions of two-byte
    # items, would take gigabytes without the cap on items.
    pairs = b"}q\x00(" + b"NN" * 500_000 + b"uccollections\nOrderedDict\nq\x01"
    put("dict-copies.pt", b"\x80\x02" + pairs + b"h\x01h\x00\x85R0" * 200 + b"N.", "items")
    put(
        "appends-flood.pt",
        b"\x80\x02]q\x00" + (b"(" + b"N" * 500_000 + b"e") * 40 + b".",
        "items",
    )
    # BUILD cannot run __setstate__: its state is stored, and a refused global in it is refused.
    put(
        "build-setstate.pt",
        b"\x80\x02ccollections\nOrderedDict\n)R}X\x0c\x00\x00\x00__setstate__cos\nsystem\nsb.",
        "refused",
        "os.system",
    )

    # Zip archives with bad storages, written by hand around a crafted data.pkl.
    def storage_pickle(numel, offset, size, stride):
        class Storage:
            pass

        marker = Storage()

        class Tensor:
            def __reduce__(self):
                return (
                    torch._utils._rebuild_tensor_v2,
                    (marker, offset, size, stride, False, collections.OrderedDict()),
                )

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if obj is marker:
                    return ("storage", torch.FloatStorage, "0", "cpu", numel)
                return None

        buf = io.BytesIO()
        P(buf, protocol=2).dump({"w": Tensor()})
        return buf.getvalue()

    def archive(name, pkl, records, *expect):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/byteorder", "little")
            for rec, data in records.items():
                z.writestr(f"archive/data/{rec}", data)
        put(name, buf.getvalue(), *expect)

    four = struct.pack("<4f", 0.5, 1.5, 2.5, 3.5)
    archive("missing-storage.pt", storage_pickle(4, 0, (4,), (1,)), {}, "storage `0` has no data")
    archive("short-storage.pt", storage_pickle(100, 0, (4,), (1,)), {"0": four}, "too short")
    archive("view-past-end.pt", storage_pickle(4, 2, (4,), (1,)), {"0": four}, "reaches element")
    archive("huge-view.pt", storage_pickle(4, 0, (1 << 40, 1 << 40), (1, 1)), {"0": four}, "too short")
    archive("broadcast-bomb.pt", storage_pickle(4, 0, (1 << 40,), (0,)), {"0": four}, "a view of")
    archive("negative-stride.pt", storage_pickle(4, 3, (4,), (-1,)), {"0": four}, "negative")
    archive("huge-numel.pt", storage_pickle(1 << 62, 0, (4,), (1,)), {"0": four}, "storage `0`")
    # A deflated data.pkl that inflates past the cap (300 MB of zeros in a few hundred KB),
    # and a compressed storage record (storages must be stored, to be read in place).
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(300):
                f.write(zeros)
    put("zip-bomb.ckpt", bomb.getvalue(), "data.pkl is larger than")
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", storage_pickle(4, 0, (4,), (1,)))
        z.writestr("archive/data/0", four, compress_type=zipfile.ZIP_DEFLATED)
    put("compressed-storage.ckpt", deflated.getvalue(), "is compressed")
    # The control: the same kind of payload, loaded by Python's own unpickler, does run (so
    # the corpus is live); the Rust test expects CONTROL and no PWNED-* file.
    pickle.loads(pickle.dumps(reducer(os.system, "touch " + os.path.join(d, "CONTROL"))))
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


# ---------------------------------------------------------------- conversions


def stand_in(module, name, obj):
    """Registers `obj` as `module.name` so that pickle records that path."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    setattr(sys.modules[module], name, obj)
    obj.__module__ = module
    obj.__qualname__ = name
    return obj


class ModelCheckpoint:
    """Stands in for pytorch_lightning's ModelCheckpoint callback."""

    def __init__(self):
        self.monitor = "val/loss"
        self.save_top_k = 3


def numpy_scalar(dtype, data):
    raise AssertionError("never called: only pickled")


class NumpyFloat:
    """A numpy scalar as old numpy pickled it (numpy.core.multiarray.scalar)."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (numpy_scalar, (np.dtype("float64"), struct.pack("<d", self.value)))


def numpy_reconstruct(*args):
    raise AssertionError("never called: only pickled")


class OldNdarray:
    """A numpy array as old numpy pickled it (numpy.core.multiarray._reconstruct)."""

    def __init__(self, array):
        self.array = array

    def __reduce__(self):
        _, args, state = self.array.__reduce__()
        return (numpy_reconstruct, args, state)


ELEMENT_SIZES = {"FloatStorage": 4, "HalfStorage": 2, "LongStorage": 8, "IntStorage": 4,
                 "BFloat16Storage": 2, "DoubleStorage": 8, "ByteStorage": 1, "BoolStorage": 1}


def storage_sizes(pkl):
    """Storage key -> element size, read from a data.pkl without loading anything."""
    found = {}

    class Inert:
        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            pass

    class Scan(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch" and name.endswith("Storage"):
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            return Inert

        def persistent_load(self, pid):
            found[pid[2]] = ELEMENT_SIZES[pid[1]]
            return None

    Scan(io.BytesIO(pkl)).load()
    return found


def big_endian_copy(src, dst):
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        pkl_name = next(n for n in names if n.endswith("/data.pkl"))
        sizes = storage_sizes(z.read(pkl_name))
        prefix = pkl_name[: -len("data.pkl")]
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
            for n in names:
                data = z.read(n)
                if n == prefix + "byteorder":
                    data = b"big"
                elif n.startswith(prefix + "data/"):
                    size = sizes[n[len(prefix + "data/"):]]
                    data = np.frombuffer(data, dtype=f"<u{size}").astype(f">u{size}").tobytes()
                out.writestr(n, data)


def convert(model, d):
    sd = load_file(model)
    stand_in("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", ModelCheckpoint)
    stand_in("numpy.core.multiarray", "scalar", numpy_scalar)
    stand_in("numpy.core.multiarray", "_reconstruct", numpy_reconstruct)

    # Zip format, Lightning wrapper, tensors as views with offsets and strides.
    wrapped = collections.OrderedDict()
    keys = sorted(sd)
    for i, k in enumerate(keys):
        v = sd[k]
        if i % 7 == 1 and v.dim() == 2:
            wrapped[k] = v.t().contiguous().t()  # column-major strides
        elif i % 7 == 2 and v.is_floating_point():
            buffer = torch.cat([torch.full((5,), 0.25, dtype=v.dtype), v.flatten()])
            wrapped[k] = buffer[5:].view(v.shape)  # a view at an offset
        elif i % 7 == 3 and v.is_floating_point():
            wrapped[k] = torch.nn.Parameter(v.clone(), requires_grad=False)
        else:
            wrapped[k] = v
    lightning = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": wrapped,
        "callbacks": {ModelCheckpoint: {"best_model_score": NumpyFloat(0.25), "best_model_path": "x.ckpt",
                                      "scores": OldNdarray(np.arange(3.0))}},
        "checkpoint_callback": ModelCheckpoint(),
        "tags": {"sd", "v1"},
        "shape": torch.Size([4, 64, 64]),
        "lr_schedulers": [],
    }
    torch.save(lightning, os.path.join(d, "zip.ckpt"))

    # Legacy format, with the CLIP key names of old transformers.
    old = {}
    for k, v in sd.items():
        old_key = k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")
        old[old_key] = v
    torch.save(old, os.path.join(d, "legacy.ckpt"), _use_new_zipfile_serialization=False)

    # fp16, with the matching .safetensors.
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save({"state_dict": half}, os.path.join(d, "fp16.ckpt"))
    save_file(half, os.path.join(d, "fp16.safetensors"))

    big_endian_copy(os.path.join(d, "zip.ckpt"), os.path.join(d, "bigendian.ckpt"))


if __name__ == "__main__":
    if sys.argv[1] == "hostile":
        hostile(sys.argv[2])
    elif sys.argv[1] == "convert":
        convert(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
