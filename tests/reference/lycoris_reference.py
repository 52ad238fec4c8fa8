"""The LyCORIS module types of A1111 v1.10.1 (extensions-builtin/Lora/): a transcription of
NetworkModule's scale/DoRA/finalize_updown (network.py), each network_*.py type's create check
and calc_updown (hada, ia3, lokr, full, norm, glora, oft) and the lyco_helpers.py rebuilds,
run on fixed-seed random tensors of every layout those types read.

LoHa and LoKr deltas are also checked against the lycoris-lora package's own rebuild
(lycoris.functional), for the layouts A1111 reads.

Usage: lycoris_reference.py DIR
Writes DIR/cases.json (one entry per case: name, module type, layer, layer key, weight
shape, multipliers, and the error A1111 raises applying it, if any) and DIR/cases.safetensors: for case NAME, the file's tensors as
`NAME/<suffix>`, the layer's weight as `NAME/:orig_weight`, and A1111's result as
`NAME/:updown` and `NAME/:ex_bias`; DIR/helpers.safetensors holds lyco_helpers.py's
rebuilds on fixed factors (see helper_cases).
"""

import json
import os
import sys

import torch
from einops import rearrange
from safetensors.torch import save_file

import lycoris.functional.loha as lycoris_loha
import lycoris.functional.lokr as lycoris_lokr

# --- lyco_helpers.py -------------------------------------------------------------------------


def make_weight_cp(t, wa, wb):
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def rebuild_conventional(up, down, shape, dyn_dim=None):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    if dyn_dim is not None:
        up = up[:, :dyn_dim]
        down = down[:dyn_dim, :]
    return (up @ down).reshape(shape)


def rebuild_cp_decomposition(up, down, mid):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up, down)


# --- network.py: the layer a module patches and NetworkModule -----------------------------


class Layer:
    """What NetworkModule reads of `sd_module`: its kind and weight."""

    def __init__(self, kind, weight):
        self.kind = kind
        self.weight = weight


class NetworkModule:
    def __init__(self, case, w):
        self.sd_key = case["sd_key"]
        self.te_multiplier = case["te"]
        self.unet_multiplier = case["unet"]
        self.sd_module = case["layer_obj"]
        self.shape = self.sd_module.weight.shape
        self.dim = None
        self.bias = w.get("bias")
        self.alpha = w["alpha"].item() if "alpha" in w else None
        self.scale = w["scale"].item() if "scale" in w else None
        self.dora_scale = w.get("dora_scale", None)
        self.dora_norm_dims = len(self.shape) - 1

    def multiplier(self):
        if "transformer" in self.sd_key[:20]:
            return self.te_multiplier
        return self.unet_multiplier

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def apply_weight_decompose(self, updown, orig_weight):
        orig_weight = orig_weight.to(updown.dtype)
        dora_scale = self.dora_scale.to(device=orig_weight.device, dtype=updown.dtype)
        updown = updown.to(orig_weight.device)
        merged = updown + orig_weight
        norm = (
            merged.transpose(0, 1)
            .reshape(merged.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(merged.shape[1], *[1] * self.dora_norm_dims)
            .transpose(0, 1)
        )
        return merged * (dora_scale / norm) - orig_weight

    def finalize_updown(self, updown, orig_weight, output_shape, ex_bias=None):
        if self.bias is not None:
            updown = updown.reshape(self.bias.shape)
            updown += self.bias.to(orig_weight.device, dtype=updown.dtype)
            updown = updown.reshape(output_shape)
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if orig_weight.size().numel() == updown.size().numel():
            updown = updown.reshape(orig_weight.shape)
        if ex_bias is not None:
            ex_bias = ex_bias * self.multiplier()
        updown = updown * self.calc_scale()
        if self.dora_scale is not None:
            updown = self.apply_weight_decompose(updown, orig_weight)
        return updown * self.multiplier(), ex_bias


def cast(t, orig_weight):
    return t.to(orig_weight.device, dtype=orig_weight.dtype)


# --- network_hada.py -------------------------------------------------------------------------


class Hada(NetworkModule):
    @staticmethod
    def accepts(w):
        return all(x in w for x in ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"])

    def __init__(self, case, w):
        super().__init__(case, w)
        self.w1a = w["hada_w1_a"]
        self.w1b = w["hada_w1_b"]
        self.dim = self.w1b.shape[0]
        self.w2a = w["hada_w2_a"]
        self.w2b = w["hada_w2_b"]
        self.t1 = w.get("hada_t1")
        self.t2 = w.get("hada_t2")

    def raw(self, orig_weight):
        w1a, w1b = cast(self.w1a, orig_weight), cast(self.w1b, orig_weight)
        w2a, w2b = cast(self.w2a, orig_weight), cast(self.w2b, orig_weight)
        output_shape = [w1a.size(0), w1b.size(1)]
        if self.t1 is not None:
            output_shape = [w1a.size(1), w1b.size(1)]
            t1 = cast(self.t1, orig_weight)
            updown1 = make_weight_cp(t1, w1a, w1b)
            output_shape += t1.shape[2:]
        else:
            if len(w1b.shape) == 4:
                output_shape += w1b.shape[2:]
            updown1 = rebuild_conventional(w1a, w1b, output_shape)
        if self.t2 is not None:
            updown2 = make_weight_cp(cast(self.t2, orig_weight), w2a, w2b)
        else:
            updown2 = rebuild_conventional(w2a, w2b, output_shape)
        return updown1 * updown2, output_shape

    def calc_updown(self, orig_weight):
        updown, output_shape = self.raw(orig_weight)
        return self.finalize_updown(updown, orig_weight, output_shape)


# --- network_ia3.py --------------------------------------------------------------------------


class Ia3(NetworkModule):
    @staticmethod
    def accepts(w):
        return "weight" in w

    def __init__(self, case, w):
        super().__init__(case, w)
        self.w = w["weight"]
        self.on_input = w["on_input"].item()

    def calc_updown(self, orig_weight):
        w = cast(self.w, orig_weight)
        output_shape = [w.size(0), orig_weight.size(1)]
        if self.on_input:
            output_shape.reverse()
        else:
            w = w.reshape(-1, 1)
        updown = orig_weight * w
        return self.finalize_updown(updown, orig_weight, output_shape)


# --- network_lokr.py -------------------------------------------------------------------------


def make_kron(orig_shape, w1, w2):
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    w2 = w2.contiguous()
    return torch.kron(w1, w2).reshape(orig_shape)


class Lokr(NetworkModule):
    @staticmethod
    def accepts(w):
        has_1 = "lokr_w1" in w or ("lokr_w1_a" in w and "lokr_w1_b" in w)
        has_2 = "lokr_w2" in w or ("lokr_w2_a" in w and "lokr_w2_b" in w)
        return has_1 and has_2

    def __init__(self, case, w):
        super().__init__(case, w)
        self.w1 = w.get("lokr_w1")
        self.w1a = w.get("lokr_w1_a")
        self.w1b = w.get("lokr_w1_b")
        self.dim = self.w1b.shape[0] if self.w1b is not None else self.dim
        self.w2 = w.get("lokr_w2")
        self.w2a = w.get("lokr_w2_a")
        self.w2b = w.get("lokr_w2_b")
        self.dim = self.w2b.shape[0] if self.w2b is not None else self.dim
        self.t2 = w.get("lokr_t2")

    def raw(self, orig_weight):
        if self.w1 is not None:
            w1 = cast(self.w1, orig_weight)
        else:
            w1 = cast(self.w1a, orig_weight) @ cast(self.w1b, orig_weight)
        if self.w2 is not None:
            w2 = cast(self.w2, orig_weight)
        elif self.t2 is None:
            w2 = cast(self.w2a, orig_weight) @ cast(self.w2b, orig_weight)
        else:
            t2 = cast(self.t2, orig_weight)
            w2 = make_weight_cp(t2, cast(self.w2a, orig_weight), cast(self.w2b, orig_weight))
        output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if len(orig_weight.shape) == 4:
            output_shape = orig_weight.shape
        return make_kron(output_shape, w1, w2), output_shape

    def calc_updown(self, orig_weight):
        updown, output_shape = self.raw(orig_weight)
        return self.finalize_updown(updown, orig_weight, output_shape)


# --- network_full.py -------------------------------------------------------------------------


class Full(NetworkModule):
    @staticmethod
    def accepts(w):
        return "diff" in w

    def __init__(self, case, w):
        super().__init__(case, w)
        self.weight = w.get("diff")
        self.ex_bias = w.get("diff_b")

    def calc_updown(self, orig_weight):
        output_shape = self.weight.shape
        updown = cast(self.weight, orig_weight)
        ex_bias = cast(self.ex_bias, orig_weight) if self.ex_bias is not None else None
        return self.finalize_updown(updown, orig_weight, output_shape, ex_bias)


# --- network_norm.py -------------------------------------------------------------------------


class Norm(NetworkModule):
    @staticmethod
    def accepts(w):
        return "w_norm" in w and "b_norm" in w

    def __init__(self, case, w):
        super().__init__(case, w)
        self.w_norm = w.get("w_norm")
        self.b_norm = w.get("b_norm")

    def calc_updown(self, orig_weight):
        output_shape = self.w_norm.shape
        updown = cast(self.w_norm, orig_weight)
        ex_bias = cast(self.b_norm, orig_weight) if self.b_norm is not None else None
        return self.finalize_updown(updown, orig_weight, output_shape, ex_bias)


# --- network_glora.py ------------------------------------------------------------------------


class GLora(NetworkModule):
    @staticmethod
    def accepts(w):
        return all(x in w for x in ["a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"])

    def __init__(self, case, w):
        super().__init__(case, w)
        self.w1a = w["a1.weight"]
        self.w1b = w["b1.weight"]
        self.w2a = w["a2.weight"]
        self.w2b = w["b2.weight"]

    def calc_updown(self, orig_weight):
        w1a, w1b = cast(self.w1a, orig_weight), cast(self.w1b, orig_weight)
        w2a, w2b = cast(self.w2a, orig_weight), cast(self.w2b, orig_weight)
        output_shape = [w1a.size(0), w1b.size(1)]
        updown = (w2b @ w1b) + ((orig_weight @ w2a) @ w1a)
        return self.finalize_updown(updown, orig_weight, output_shape)


# --- network_oft.py --------------------------------------------------------------------------


class Oft(NetworkModule):
    @staticmethod
    def accepts(w):
        return "oft_blocks" in w or "oft_diag" in w

    def __init__(self, case, w):
        super().__init__(case, w)
        self.scale = 1.0
        self.is_R = False
        self.is_boft = False
        if "oft_blocks" in w:
            self.oft_blocks = w["oft_blocks"]
            self.alpha = w.get("alpha", None)
            self.dim = self.oft_blocks.shape[0]
        elif "oft_diag" in w:
            self.is_R = True
            self.oft_blocks = w["oft_diag"]
            self.dim = self.oft_blocks.shape[1]
        # Linear and Conv2d both have their output size first in the weight.
        assert self.sd_module.kind in ("linear", "conv2d")
        self.out_dim = self.sd_module.weight.shape[0]
        if self.oft_blocks.dim() == 4:
            self.is_boft = True
        self.rescale = w.get("rescale", None)
        if self.rescale is not None:
            self.rescale = self.rescale.reshape(-1, *[1] * (self.sd_module.weight.dim() - 1))
        self.num_blocks = self.dim
        self.block_size = self.out_dim // self.dim
        self.constraint = (0 if self.alpha is None else self.alpha) * self.out_dim
        if self.is_R:
            self.constraint = None
            self.block_size = self.dim
            self.num_blocks = self.out_dim // self.dim
        elif self.is_boft:
            self.boft_m = self.oft_blocks.shape[0]
            self.num_blocks = self.oft_blocks.shape[1]
            self.block_size = self.oft_blocks.shape[2]
            self.boft_b = self.block_size

    def calc_updown(self, orig_weight):
        oft_blocks = self.oft_blocks.to(orig_weight.device)
        eye = torch.eye(self.block_size, device=oft_blocks.device)
        if not self.is_R:
            block_Q = oft_blocks - oft_blocks.transpose(-1, -2)
            if self.constraint != 0:
                norm_Q = torch.norm(block_Q.flatten())
                new_norm_Q = torch.clamp(norm_Q, max=self.constraint.to(oft_blocks.device))
                block_Q = block_Q * ((new_norm_Q + 1e-8) / (norm_Q + 1e-8))
            oft_blocks = torch.matmul(eye + block_Q, (eye - block_Q).float().inverse())
        R = oft_blocks.to(orig_weight.device)
        if not self.is_boft:
            merged = rearrange(orig_weight, "(k n) ... -> k n ...", k=self.num_blocks, n=self.block_size)
            merged = torch.einsum("k n m, k n ... -> k m ...", R, merged)
            merged = rearrange(merged, "k m ... -> (k m) ...")
        else:
            scale = 1.0
            m = self.boft_m
            b = self.boft_b
            r_b = b // 2
            inp = orig_weight
            for i in range(m):
                bi = R[i]
                if i == 0:
                    bi = bi * scale + (1 - scale) * eye
                inp = rearrange(inp, "(c g k) ... -> (c k g) ...", g=2, k=2**i * r_b)
                inp = rearrange(inp, "(d b) ... -> d b ...", b=b)
                inp = torch.einsum("b i j, b j ... -> b i ...", bi, inp)
                inp = rearrange(inp, "d b ... -> (d b) ...")
                inp = rearrange(inp, "(c k g) ... -> (c g k) ...", g=2, k=2**i * r_b)
            merged = inp
        if self.rescale is not None:
            merged = self.rescale.to(merged) * merged
        updown = merged.to(orig_weight.device) - orig_weight.to(merged.dtype)
        return self.finalize_updown(updown, orig_weight, orig_weight.shape)


# networks.py's module_types, in its order (LoRA itself is another test's).
MODULE_TYPES = [("hada", Hada), ("ia3", Ia3), ("lokr", Lokr), ("full", Full), ("norm", Norm), ("glora", GLora), ("oft", Oft)]


# --- the cases -------------------------------------------------------------------------------

GEN = torch.Generator().manual_seed(20240727)

TE_KEY = "transformer_text_model_encoder_layers_0_mlp_fc1"
UNET_KEY = "diffusion_model_input_blocks_1_0_in_layers_2"


def rand(*shape, std=0.5):
    """Normal values of standard deviation `std`, never all equal."""
    return torch.randn(*shape, generator=GEN) * std


def positive(*shape):
    """Values in [0.5, 1.5): DoRA magnitudes and rescale factors."""
    return torch.rand(*shape, generator=GEN) + 0.5


def scalar(value):
    return torch.tensor(float(value))


CASES = []


def case(name, layer, weight_shape, w, te=0.8, unet=0.6, sd_key=None, orig_dtype=torch.float32):
    """Registers a case; the layer key picks which multiplier applies."""
    if sd_key is None:
        sd_key = TE_KEY if layer == "linear" else UNET_KEY
    CASES.append(
        dict(name=name, layer=layer, weight_shape=list(weight_shape), w=w, te=te, unet=unet,
             sd_key=sd_key, orig_dtype=orig_dtype)
    )


def hada_cases():
    r = 4
    lin = dict(hada_w1_a=rand(12, r), hada_w1_b=rand(r, 10), hada_w2_a=rand(12, r), hada_w2_b=rand(r, 10))
    case("hada_linear", "linear", [12, 10], dict(lin, alpha=scalar(2)))
    case("hada_linear_no_alpha", "linear", [12, 10], dict(lin), te=-0.5)
    case("hada_linear_scale", "linear", [12, 10], dict(lin, alpha=scalar(2), scale=scalar(0.3)), sd_key=UNET_KEY)
    case("hada_linear_dora", "linear", [12, 10], dict(lin, alpha=scalar(3), dora_scale=positive(1, 10)), te=1.3)
    case("hada_linear_bias", "linear", [12, 10], dict(lin, alpha=scalar(6), bias=rand(12, 10, std=0.1)), te=0.25)
    case("hada_linear_fp16", "linear", [12, 10], dict(lin, alpha=scalar(2)), orig_dtype=torch.float16)
    flat = dict(hada_w1_a=rand(8, r), hada_w1_b=rand(r, 6 * 9), hada_w2_a=rand(8, r), hada_w2_b=rand(r, 6 * 9))
    case("hada_conv3_flat", "conv2d", [8, 6, 3, 3], dict(flat, alpha=scalar(1.5)))
    case("hada_conv3_flat_bias", "conv2d", [8, 6, 3, 3], dict(flat, alpha=scalar(1.5), bias=rand(8, 54, std=0.1)), unet=-1.0)
    conv4 = dict(hada_w1_a=rand(8, r), hada_w1_b=rand(r, 6, 3, 3), hada_w2_a=rand(8, r), hada_w2_b=rand(r, 6, 3, 3))
    case("hada_conv3_4d", "conv2d", [8, 6, 3, 3], dict(conv4, alpha=scalar(8)))
    case("hada_conv3_4d_dora", "conv2d", [8, 6, 3, 3], dict(conv4, alpha=scalar(8), dora_scale=positive(1, 6, 1, 1)))
    cp = dict(hada_t1=rand(r, r, 3, 3), hada_w1_a=rand(r, 8), hada_w1_b=rand(r, 6),
              hada_t2=rand(r, r, 3, 3), hada_w2_a=rand(r, 8), hada_w2_b=rand(r, 6))
    case("hada_conv3_cp", "conv2d", [8, 6, 3, 3], dict(cp, alpha=scalar(2)), unet=1.1)
    case("hada_conv3_cp_scale_bias", "conv2d", [8, 6, 3, 3], dict(cp, scale=scalar(0.7), bias=rand(8, 6, 3, 3, std=0.1)))
    t1_only = dict(hada_t1=rand(r, r, 3, 3), hada_w1_a=rand(r, 8), hada_w1_b=rand(r, 6),
                   hada_w2_a=rand(8, r), hada_w2_b=rand(r, 6 * 9))
    case("hada_conv3_cp_t1_only", "conv2d", [8, 6, 3, 3], dict(t1_only, alpha=scalar(5)))
    one = dict(hada_w1_a=rand(8, r), hada_w1_b=rand(r, 6), hada_w2_a=rand(8, r), hada_w2_b=rand(r, 6))
    case("hada_conv1", "conv2d", [8, 6, 1, 1], dict(one, alpha=scalar(1)))
    case("hada_conv1_dora", "conv2d", [8, 6, 1, 1], dict(one, alpha=scalar(1), dora_scale=positive(1, 6, 1, 1)), unet=0.9)


def lokr_cases():
    r = 3
    case("lokr_linear_whole", "linear", [12, 12], dict(lokr_w1=rand(2, 3), lokr_w2=rand(6, 4), alpha=scalar(7)))
    case("lokr_linear_w2_pair", "linear", [12, 12], dict(lokr_w1=rand(2, 3), lokr_w2_a=rand(6, r), lokr_w2_b=rand(r, 4), alpha=scalar(2)), sd_key=UNET_KEY)
    pairs = dict(lokr_w1_a=rand(2, 2), lokr_w1_b=rand(2, 3), lokr_w2_a=rand(6, r), lokr_w2_b=rand(r, 4))
    case("lokr_linear_pairs", "linear", [12, 12], dict(pairs, alpha=scalar(1)), te=-0.7)
    case("lokr_linear_w1_pair_only", "linear", [12, 12], dict(lokr_w1_a=rand(2, 5), lokr_w1_b=rand(5, 3), lokr_w2=rand(6, 4), alpha=scalar(2)))
    case("lokr_linear_scale", "linear", [12, 12], dict(pairs, alpha=scalar(1), scale=scalar(1.7)))
    case("lokr_linear_dora", "linear", [12, 12], dict(pairs, alpha=scalar(2), dora_scale=positive(1, 12)))
    case("lokr_linear_bias", "linear", [12, 12], dict(pairs, alpha=scalar(2), bias=rand(12, 12, std=0.1)))
    case("lokr_linear_fp16", "linear", [12, 12], dict(pairs, alpha=scalar(2)), orig_dtype=torch.float16)
    case("lokr_conv3_whole", "conv2d", [8, 6, 3, 3], dict(lokr_w1=rand(2, 2), lokr_w2=rand(4, 3, 3, 3), alpha=scalar(4)))
    case("lokr_conv3_flat_pair", "conv2d", [8, 6, 3, 3], dict(lokr_w1=rand(2, 2), lokr_w2_a=rand(4, r), lokr_w2_b=rand(r, 27), alpha=scalar(2)), unet=1.4)
    cp = dict(lokr_w1=rand(2, 2), lokr_t2=rand(r, r, 3, 3), lokr_w2_a=rand(r, 4), lokr_w2_b=rand(r, 3))
    case("lokr_conv3_cp", "conv2d", [8, 6, 3, 3], dict(cp, alpha=scalar(2)))
    case("lokr_conv3_cp_dora_bias", "conv2d", [8, 6, 3, 3], dict(cp, alpha=scalar(2), dora_scale=positive(1, 6, 1, 1), bias=rand(8, 6, 3, 3, std=0.1)))
    case("lokr_conv1", "conv2d", [8, 6, 1, 1], dict(lokr_w1=rand(2, 2), lokr_w2=rand(4, 3, 1, 1)), unet=-0.3)
    case("lokr_conv1_pair", "conv2d", [8, 6, 1, 1], dict(lokr_w1_a=rand(2, 1), lokr_w1_b=rand(1, 2), lokr_w2_a=rand(4, r), lokr_w2_b=rand(r, 3), alpha=scalar(5)))


def full_cases():
    case("full_linear", "linear", [12, 10], dict(diff=rand(12, 10, std=0.1), diff_b=rand(12, std=0.1)))
    case("full_linear_alpha_ignored", "linear", [12, 10], dict(diff=rand(12, 10, std=0.1), alpha=scalar(3)), sd_key=UNET_KEY)
    case("full_linear_scale_dora", "linear", [12, 10], dict(diff=rand(12, 10, std=0.1), scale=scalar(0.4), dora_scale=positive(1, 10)))
    case("full_conv3", "conv2d", [8, 6, 3, 3], dict(diff=rand(8, 6, 3, 3, std=0.1), diff_b=rand(8, std=0.1)), unet=-0.8)
    case("full_conv1_bias", "conv2d", [8, 6, 1, 1], dict(diff=rand(8, 6, 1, 1, std=0.1), bias=rand(8, 6, 1, 1, std=0.1)))
    case("full_linear_fp16", "linear", [12, 10], dict(diff=rand(12, 10, std=0.1), diff_b=rand(12, std=0.1)), orig_dtype=torch.float16)


def ia3_cases():
    case("ia3_linear_output", "linear", [12, 10], dict(weight=rand(12), on_input=torch.tensor(False)))
    case("ia3_linear_input", "linear", [12, 10], dict(weight=rand(10), on_input=torch.tensor(True)), te=-1.2)
    case("ia3_linear_input_int", "linear", [12, 10], dict(weight=rand(10), on_input=torch.tensor(1)), sd_key=UNET_KEY)
    case("ia3_linear_scale_dora", "linear", [12, 10], dict(weight=rand(12), on_input=torch.tensor(0), scale=scalar(0.5), dora_scale=positive(1, 10)))
    case("ia3_linear_bias", "linear", [12, 10], dict(weight=rand(12), on_input=torch.tensor(0), bias=rand(12, 10, std=0.1)))
    # One scale per output row of a [8, 6, 3, 3] weight does not broadcast: a layer error.
    case("ia3_conv3_error", "conv2d", [8, 6, 3, 3], dict(weight=rand(8), on_input=torch.tensor(0)))


def glora_cases():
    r = 3
    w = {"a1.weight": rand(r, 10), "a2.weight": rand(10, r), "b1.weight": rand(r, 10), "b2.weight": rand(12, r)}
    case("glora_linear", "linear", [12, 10], dict(w, alpha=scalar(1)))
    case("glora_linear_scale_dora", "linear", [12, 10], dict(w, alpha=scalar(1), scale=scalar(0.6), dora_scale=positive(1, 10)), sd_key=UNET_KEY)
    # A bias reshapes the change to A1111's [a1 rows, b1 columns] on the way: a layer error
    # unless the rank equals the output size.
    case("glora_linear_bias_error", "linear", [12, 10], dict(w, alpha=scalar(2), bias=rand(12, 10, std=0.1)), te=0.9)
    wide = {"a1.weight": rand(12, 10), "a2.weight": rand(10, 12), "b1.weight": rand(12, 10), "b2.weight": rand(12, 12)}
    case("glora_linear_full_rank_bias", "linear", [12, 10], dict(wide, alpha=scalar(2), bias=rand(12, 10, std=0.1)))
    # `W @ a2` on a convolution's 4-D weight: a layer error in A1111.
    case("glora_conv3_error", "conv2d", [8, 6, 3, 3], {"a1.weight": rand(r, 54), "a2.weight": rand(54, r), "b1.weight": rand(r, 54), "b2.weight": rand(8, r), "alpha": scalar(1)})


def norm_cases():
    case("norm_layernorm", "layernorm", [16], dict(w_norm=rand(16, std=0.1), b_norm=rand(16, std=0.1)))
    case("norm_groupnorm", "groupnorm", [8], dict(w_norm=rand(8, std=0.1), b_norm=rand(8, std=0.1), scale=scalar(2)), unet=-0.4)
    case("norm_layernorm_alpha_ignored", "layernorm", [16], dict(w_norm=rand(16, std=0.1), b_norm=rand(16, std=0.1), alpha=scalar(3), bias=rand(16, std=0.1)))


def oft_cases():
    # kohya-ss / new LyCORIS: generators, capped at alpha·out_dim when alpha is small.
    case("oft_linear_capped", "linear", [12, 10], dict(oft_blocks=rand(4, 3, 3), alpha=scalar(0.01)))
    case("oft_linear_uncapped", "linear", [12, 10], dict(oft_blocks=rand(4, 3, 3), alpha=scalar(10)), sd_key=UNET_KEY)
    case("oft_linear_no_alpha", "linear", [12, 10], dict(oft_blocks=rand(2, 6, 6), scale=scalar(5)), te=-0.6)
    case("oft_linear_rescale_dora", "linear", [12, 10], dict(oft_blocks=rand(4, 3, 3), alpha=scalar(0.02), rescale=positive(12), dora_scale=positive(1, 10)))
    case("oft_conv3", "conv2d", [8, 6, 3, 3], dict(oft_blocks=rand(2, 4, 4), alpha=scalar(0.05)))
    case("oft_conv1_bias", "conv2d", [8, 6, 1, 1], dict(oft_blocks=rand(4, 2, 2), alpha=scalar(1), bias=rand(8, 6, 1, 1, std=0.1)))
    # Old LyCORIS: the rotations themselves.
    case("oft_diag_linear", "linear", [12, 10], dict(oft_diag=rand(3, 4, 4), alpha=scalar(2)))
    case("oft_diag_conv3", "conv2d", [8, 6, 3, 3], dict(oft_diag=rand(4, 2, 2)), unet=1.5)
    # BOFT: butterfly stages.
    case("boft_linear", "linear", [16, 10], dict(oft_blocks=rand(2, 4, 4, 4, std=0.2), alpha=scalar(0.05)))
    case("boft_linear_3_stages", "linear", [16, 6], dict(oft_blocks=rand(3, 8, 2, 2, std=0.3)), sd_key=UNET_KEY)
    case("boft_conv3_rescale", "conv2d", [8, 6, 3, 3], dict(oft_blocks=rand(2, 2, 4, 4, std=0.2), alpha=scalar(0.5), rescale=positive(8)), unet=0.7)
    case("boft_conv1", "conv2d", [16, 4, 1, 1], dict(oft_blocks=rand(2, 4, 4, 4, std=0.2)))
    # float32 rotations against a float16 weight: einsum refuses the mix, a layer error.
    case("oft_linear_fp16_error", "linear", [12, 10], dict(oft_blocks=rand(4, 3, 3), alpha=scalar(0.01)), orig_dtype=torch.float16)
    case("oft_diag_linear_fp16", "linear", [12, 10], dict(oft_diag=rand(3, 4, 4).half()), orig_dtype=torch.float16)


def check_against_lycoris(module, orig_weight, name):
    """LoHa/LoKr: A1111's unscaled delta equals lycoris-lora's rebuild of the same factors."""
    if isinstance(module, Hada):
        if (module.t1 is None) != (module.t2 is None):
            return  # lycoris writes both cores or neither
        theirs = lycoris_loha.diff_weight(module.w1b, module.w1a, module.w2b, module.w2a, module.t1, module.t2, gamma=1.0, backend="torch")
    elif isinstance(module, Lokr):
        theirs = lycoris_lokr.kron_weight(module.w1, module.w1a, module.w1b, module.w2, module.w2a, module.w2b, module.t2, scale=1.0, backend="torch")
    else:
        return
    ours, _ = module.raw(orig_weight)
    ours, theirs = ours.reshape(orig_weight.shape), theirs.reshape(orig_weight.shape)
    err = (ours.float() - theirs.float()).abs().max().item() / max(theirs.abs().max().item(), 1.0)
    tolerance = 1e-3 if orig_weight.dtype == torch.float16 else 1e-6
    if err > tolerance:
        raise SystemExit(f"{name}: A1111's delta differs from lycoris-lora's by {err:.3e}")
    print(f"{name}: matches lycoris-lora ({err:.1e})")


def helper_cases():
    """The lyco_helpers.py rebuilds LoRA's own type also uses: `rebuild_conventional` with
    `dyn_dim` (within, past and counted from the end of the rank) on 2-D and conv factors, and
    `rebuild_cp_decomposition`."""
    out = {"up": rand(8, 5), "down": rand(5, 6, 3, 3), "mid": rand(5, 5, 3, 3), "up4": rand(8, 5, 1, 1), "down2": rand(5, 6)}
    for dyn in (None, 3, 9, -2):
        out[f"conventional_{dyn}"] = rebuild_conventional(out["up"], out["down"], (8, 6, 3, 3), dyn)
    out["cp"] = rebuild_cp_decomposition(out["up4"], out["down2"], out["mid"])
    return {k: v.contiguous() for k, v in out.items()}


def main() -> None:
    folder = sys.argv[1]
    for make in (hada_cases, lokr_cases, full_cases, ia3_cases, glora_cases, norm_cases, oft_cases):
        make()
    tensors = {}
    manifest = []
    for c in CASES:
        orig_weight = rand(*c["weight_shape"]).to(c["orig_dtype"])
        c["layer_obj"] = Layer(c["layer"], orig_weight)
        w = c["w"]
        kind, module_type = next((k, t) for k, t in MODULE_TYPES if t.accepts(w))
        module = module_type(c, w)
        check_against_lycoris(module, orig_weight, c["name"])
        name = c["name"]
        # Saved before applying: for a full diff or norm module with a stored `bias`,
        # finalize_updown's `updown += bias` writes into the module's own `diff`/`w_norm`
        # (`.to()` of a tensor already in the right dtype is the tensor itself), so A1111's
        # first application is the one reproduced; a later one adds the bias again.
        for suffix, t in w.items():
            tensors[f"{name}/{suffix}"] = t.clone()
        tensors[f"{name}/:orig_weight"] = orig_weight.clone()
        try:
            updown, ex_bias = module.calc_updown(orig_weight)
            error = None
        except RuntimeError as e:
            # What networks.py's network_apply_weights catches: the layer is left unpatched.
            updown, ex_bias, error = None, None, str(e)
        if name.endswith("_error") != (error is not None):
            raise SystemExit(f"{name}: expected {'an error' if name.endswith('_error') else 'no error'}, got {error}")
        if updown is not None:
            tensors[f"{name}/:updown"] = updown.contiguous()
        if ex_bias is not None:
            tensors[f"{name}/:ex_bias"] = ex_bias.contiguous()
        manifest.append(
            dict(name=name, type=kind, layer=c["layer"], sd_key=c["sd_key"], weight_shape=c["weight_shape"],
                 te=c["te"], unet=c["unet"], suffixes=sorted(w), error=error)
        )
    save_file(tensors, os.path.join(folder, "cases.safetensors"))
    save_file(helper_cases(), os.path.join(folder, "helpers.safetensors"))
    with open(os.path.join(folder, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
