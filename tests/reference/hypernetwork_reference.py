"""A1111 hypernetworks: fixture files in A1111's format, and the reference that applies them.

The reference is a short transcription of what A1111 v1.10.1 does
(`modules/hypernetworks/hypernetwork.py`): `A1111Module` lays out its Sequential as
`HypernetworkModule.__init__` does (Linear, activation unless none/"linear" or the last layer
without `activate_output`, LayerNorm, Dropout where the dropout structure is positive; every
layer takes an index) and its forward is `x + seq(x) * multiplier`; `load` reads a file as
`Hypernetwork.load` does (defaults, `parse_dropout_structure`, old `linear1/linear2` keys,
strict `load_state_dict`); `HypernetworkProcessor` is `attention_CrossAttention_forward`
with `apply_hypernetworks` as a diffusers attention processor: keys and values from the
context through each hypernetwork's modules for the context's width, chained, in every
attention of the UNet (self-attention's context is its input).

Usage:
  hypernetwork_reference.py make DIR
      writes the fixtures (DIR/*.pt, torch.save of A1111's dict) and DIR/manifest.json:
      {"good": {name: [widths]}, "broken": {name: what is wrong}}
  hypernetwork_reference.py modules DIR MULTIPLIER OUT.safetensors
      per good fixture and width: `x.<width>` [2, 5, width] and `<name>.<width>.k|v`
  hypernetwork_reference.py unet CHECKPOINT DIR CASES.json OUT.safetensors
      CASES.json: {case: [[name, multiplier], ...]}; writes inputs `x`, `t`, `context` and
      the UNet output per case (and `none` without hypernetworks)
  hypernetwork_reference.py img2img HYPERNETS.json CHECKPOINT INIT.png CASES.json OUT_DIR
      img2img_reference.py's job with the hypernetworks [[path, multiplier], ...] installed
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))

SEED = 20240518

# Softmax, Softmin and LogSoftmax built without `dim`, as A1111 builds them, warn on each call.
warnings.filterwarnings("ignore", message="Implicit dimension choice")

# `HypernetworkModule.activation_dict`: A1111's seven names, then torch's activation classes.
ACTIVATIONS = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}
ACTIVATIONS.update({
    name.lower(): cls
    for name, cls in inspect.getmembers(torch.nn.modules.activation)
    if inspect.isclass(cls) and cls.__module__ == "torch.nn.modules.activation"
})


class A1111Module(torch.nn.Module):
    """`HypernetworkModule` at inference."""

    def __init__(self, dim, layer_structure, activation, layer_norm, activate_output, dropout):
        super().__init__()
        assert layer_structure[0] == 1 and layer_structure[-1] == 1
        layers = []
        n = len(layer_structure)
        for i in range(n - 1):
            layers.append(torch.nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
            if not (activation in (None, "linear") or (i >= n - 2 and not activate_output)):
                layers.append(ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(torch.nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if dropout is not None and dropout[i + 1] > 0:
                assert 0 < dropout[i + 1] < 1
                layers.append(torch.nn.Dropout(p=dropout[i + 1]))
        self.linear = torch.nn.Sequential(*layers)
        self.multiplier = 1.0

    def forward(self, x):
        return x + self.linear(x) * self.multiplier


def parse_dropout_structure(layer_structure, use_dropout, last_layer_dropout):
    if not use_dropout:
        return [0] * len(layer_structure)
    return [0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0] + [0]


def layout(meta: dict):
    """`Hypernetwork.load`'s reading of the metadata, defaults included."""
    layer_structure = meta.get("layer_structure", [1, 2, 1])
    dropout = meta.get("dropout_structure", None)
    use_dropout = True if dropout is not None and any(dropout) else meta.get("use_dropout", False)
    if dropout is None:
        dropout = parse_dropout_structure(layer_structure, use_dropout, meta.get("last_layer_dropout", False))
    return (layer_structure, meta.get("activation_func", None), meta.get("is_layer_norm", False),
            meta.get("activate_output", True), dropout)


OLD_KEYS = {"linear1.bias": "linear.0.bias", "linear1.weight": "linear.0.weight",
            "linear2.bias": "linear.1.bias", "linear2.weight": "linear.1.weight"}


def load(path: str) -> dict[int, tuple[A1111Module, A1111Module]]:
    """`Hypernetwork.load`: the (key, value) modules per context width."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    shape = layout(state)
    layers = {}
    for width, dicts in state.items():
        if type(width) is not int:
            continue
        pair = []
        for sd in dicts[:2]:
            sd = {OLD_KEYS.get(k, k): v for k, v in sd.items()}
            module = A1111Module(width, *shape)
            module.load_state_dict(sd, strict=True)
            pair.append(module.eval())
        layers[width] = tuple(pair)
    return layers


class HypernetworkProcessor:
    """`attention_CrossAttention_forward` with `apply_hypernetworks`, for diffusers' Attention."""

    def __init__(self, hypernetworks):
        self.hypernetworks = hypernetworks  # [(layers by width, multiplier), ...] in order

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        context_k = context_v = context
        for layers, multiplier in self.hypernetworks:
            pair = layers.get(context_k.shape[2])
            if pair is None:
                continue
            pair[0].multiplier = pair[1].multiplier = multiplier
            context_k, context_v = pair[0](context_k), pair[1](context_v)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context_k), attn.to_v(context_v)
        b, heads = q.shape[0], attn.heads
        q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3])
        return attn.to_out[1](attn.to_out[0](out))


def install(unet, hypernetworks):
    unet.set_attn_processor(HypernetworkProcessor(hypernetworks))
    return unet


# ---------------------------------------------------------------- fixtures


def randomise(module: A1111Module, gen: torch.Generator) -> None:
    """Non-degenerate weights: every tensor random, layer norms around 1, PReLU slopes varied."""
    for layer in module.linear:
        if isinstance(layer, torch.nn.Linear):
            fan_in = layer.weight.shape[1]
            layer.weight.data = torch.randn(layer.weight.shape, generator=gen) * (0.8 / fan_in ** 0.5)
            layer.bias.data = torch.randn(layer.bias.shape, generator=gen) * 0.1
        elif isinstance(layer, torch.nn.LayerNorm):
            layer.weight.data = 1 + torch.randn(layer.weight.shape, generator=gen) * 0.2
            layer.bias.data = torch.randn(layer.bias.shape, generator=gen) * 0.1
        elif isinstance(layer, torch.nn.PReLU):
            layer.weight.data = 0.1 + torch.rand(layer.weight.shape, generator=gen) * 0.5


def save_a1111(path: str, widths, meta: dict, gen: torch.Generator, old_keys=False, edit=None) -> None:
    """`Hypernetwork.save`'s file: {width: (key state dict, value state dict)} and metadata."""
    shape = layout(meta)
    state = {}
    for width in widths:
        pair = []
        for _ in range(2):
            module = A1111Module(width, *shape)
            randomise(module, gen)
            sd = module.state_dict()
            if old_keys:
                sd = {{v: k for k, v in OLD_KEYS.items()}[k]: v for k, v in sd.items()}
            if edit is not None:
                edit(sd)
            pair.append(sd)
        state[width] = tuple(pair)
    state.update(meta)
    state.setdefault("step", 1000)
    state.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    torch.save(state, path)


class Hostile:
    """Unpickling this runs a shell command: the file must be refused, never executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    full = {"weight_initialization": "Normal", "use_dropout": False, "sd_checkpoint": None,
            "sd_checkpoint_name": None, "optional_info": None}
    good = {
        # No metadata at all: [1, 2, 1], no activation, activate_output True.
        "defaults": ([32, 64], {}),
        "linear_ln": ([32, 64], {**full, "layer_structure": [1, 2, 1], "activation_func": "linear",
                                 "is_layer_norm": True, "activate_output": False}),
        "relu_ln": ([32, 64], {**full, "layer_structure": [1, 2, 1], "activation_func": "relu",
                               "is_layer_norm": True, "activate_output": True, "last_layer_dropout": False,
                               "dropout_structure": [0, 0, 0]}),
        # Dropout from use_dropout + last_layer_dropout (files before dropout_structure):
        # Linear, Hardswish, LayerNorm, Dropout twice, then Linear, Hardswish, LayerNorm.
        "swish_deep": ([32, 64], {"layer_structure": [1, 1.5, 2, 1], "activation_func": "swish",
                                  "is_layer_norm": True, "use_dropout": True, "last_layer_dropout": True}),
        "mish_dropout": ([32, 64], {**full, "layer_structure": [1, 2, 2, 1], "activation_func": "mish",
                                    "is_layer_norm": False, "activate_output": False, "use_dropout": True,
                                    "dropout_structure": [0, 0.1, 0.2, 0]}),
        # One linear layer followed by a dropout: parse_dropout_structure's three entries.
        "single": ([32], {"layer_structure": [1, 1], "activation_func": "tanh", "use_dropout": True,
                          "last_layer_dropout": True}),
        # 768 is no width of the tiny models: that module never applies.
        "width64": ([64, 768], {**full, "layer_structure": [1, 2, 1], "activation_func": "elu",
                                "is_layer_norm": False, "activate_output": True}),
    }
    for name, (widths, meta) in good.items():
        save_a1111(os.path.join(out, f"{name}.pt"), widths, meta, gen)
    # The first format: `linear1`/`linear2` keys, no metadata.
    save_a1111(os.path.join(out, "old_keys.pt"), [32], {}, gen, old_keys=True)
    good["old_keys"] = ([32], {})
    os.makedirs(os.path.join(out, "activations"), exist_ok=True)
    for act in sorted(ACTIVATIONS):
        if act in ("linear", "glu", "threshold", "multiheadattention"):
            continue
        name = f"act_{act}"
        save_a1111(os.path.join(out, "activations", f"{name}.pt"), [32],
                   {"layer_structure": [1, 2, 1], "activation_func": act, "activate_output": True}, gen)
        good[name] = ([32], {})

    broken_dir = os.path.join(out, "broken")
    os.makedirs(broken_dir, exist_ok=True)
    plain = {"layer_structure": [1, 2, 1], "activation_func": "relu"}
    # (what the file says on top of `plain`'s valid layout, what is done to its state dicts)
    broken = {
        "unknown_activation": ({"activation_func": "banana"}, None),
        "threshold": ({"activation_func": "threshold"}, None),
        # GLU has no weights, so `plain`'s weights fit its layout; it halves the width.
        "glu": ({"activation_func": "glu"}, None),
        "missing_weight": ({}, lambda sd: sd.pop("linear.2.bias")),
        "wrong_shape": ({}, lambda sd: sd.__setitem__("linear.0.weight", sd["linear.0.weight"].t().clone())),
        "extra_weight": ({}, lambda sd: sd.__setitem__("linear.7.weight", torch.ones(3) * 0.5)),
        "bad_layer_structure": ({"layer_structure": [2, 1]}, None),
        "bad_dropout": ({"dropout_structure": [0, 1.5, 0]}, None),
    }
    for name, (override, edit) in broken.items():
        path = os.path.join(broken_dir, f"{name}.pt")
        save_a1111(path, [32], plain, gen, edit=edit)
        state = torch.load(path, weights_only=True)
        state.update(override)
        torch.save(state, path)
    torch.save({32: Hostile(os.path.join(out, "PWNED")), "layer_structure": [1, 2, 1]},
               os.path.join(broken_dir, "hostile.pt"))
    with open(os.path.join(broken_dir, "not_a_zip.pt"), "wb") as f:
        f.write(b"\x80\x02}q\x00.")
    broken_names = sorted(list(broken) + ["hostile", "not_a_zip"])
    manifest = {"good": {name: widths for name, (widths, _) in good.items()}, "broken": broken_names}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def find(directory: str, name: str) -> str:
    for root, _, files in os.walk(directory):
        if f"{name}.pt" in files:
            return os.path.join(root, f"{name}.pt")
    raise FileNotFoundError(name)


@torch.no_grad()
def modules(directory: str, multiplier: float, out: str) -> None:
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    gen = torch.Generator().manual_seed(SEED + 1)
    tensors = {}
    for width in (32, 64):
        tensors[f"x.{width}"] = torch.randn((2, 5, width), generator=gen)
    for name, widths in manifest["good"].items():
        layers = load(find(directory, name))
        for width in widths:
            if f"x.{width}" not in tensors:
                continue
            for module, which in zip(layers[width], "kv"):
                module.multiplier = multiplier
                tensors[f"{name}.{width}.{which}"] = module(tensors[f"x.{width}"]).contiguous()
    save_file(tensors, out)


@torch.no_grad()
def unet(checkpoint: str, directory: str, cases_path: str, out: str) -> None:
    from ldm_to_diffusers import build_unet, load_checkpoint

    torch.set_num_threads(1)
    model = build_unet(load_checkpoint(checkpoint))
    gen = torch.Generator().manual_seed(SEED + 2)
    x = torch.randn((2, 4, 16, 16), generator=gen)
    t = torch.tensor([500.0, 731.0])
    context = torch.randn((2, 77, model.config.cross_attention_dim), generator=gen)
    tensors = {"x": x, "t": t, "context": context}
    tensors["none"] = model(x, t, context).sample
    for case, entries in json.load(open(cases_path)).items():
        install(model, [(load(find(directory, name)), m) for name, m in entries])
        tensors[case] = model(x, t, context).sample
    save_file(tensors, out)


def img2img(hypernets_path: str, args: list[str]) -> None:
    import img2img_reference

    hypernets = [(load(path), m) for path, m in json.load(open(hypernets_path))]
    build = img2img_reference.build_unet
    img2img_reference.build_unet = lambda sd: install(build(sd), hypernets)
    sys.argv = ["img2img_reference.py", *args]
    img2img_reference.main()


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "make":
        make(sys.argv[2])
    elif command == "modules":
        modules(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    elif command == "unet":
        unet(*sys.argv[2:6])
    elif command == "img2img":
        img2img(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"unknown command {command}")
