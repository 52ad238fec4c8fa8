"""Reference for A1111's "NV" RNG source (`modules/rng_philox.py: Generator`): Philox4x32-10 +
Box–Muller in numpy, written from a description of that module, not from its code (numpy's
uint32 × float32 promotion to float64 included).

Usage: philox_reference.py OUT.safetensors
Writes "nv/{seed}/{shape}/{k}" for the k-th successive draw of each seed and shape.
"""

import sys

import numpy as np
import torch
from safetensors.torch import save_file

MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
WEYL = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
INV = np.array([2.3283064e-10], dtype=np.float32)
INV_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


def philox(c0, c1, c2, c3, k0, k1):
    for round_index in range(10):
        p0 = c0.astype(np.uint64) * MULTIPLIERS[0]
        p1 = c2.astype(np.uint64) * MULTIPLIERS[1]
        hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), p0.astype(np.uint32)
        hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), p1.astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if round_index < 9:
            k0 = k0 + WEYL[0]
            k1 = k1 + WEYL[1]
    return c0, c1


def randn(seed, offset, shape):
    n = int(np.prod(shape))
    zeros = np.zeros(n, dtype=np.uint32)
    c0 = np.full(n, offset, dtype=np.uint32)
    c2 = np.arange(n, dtype=np.uint32)
    k0 = np.full(n, seed & 0xFFFFFFFF, dtype=np.uint32)
    k1 = np.full(n, seed >> 32, dtype=np.uint32)
    x, y = philox(c0, zeros, c2, zeros.copy(), k0, k1)
    u = x * INV + INV / 2          # uint32 × float32 array → float64, as in A1111
    v = y * INV_2PI + INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


def main():
    out = {}
    for seed in (0, 1234, 4294967293, 2**40 + 7):
        for shape in ((4, 8, 8), (4, 5, 7)):
            for k in range(3):
                name = f"nv/{seed}/{'x'.join(map(str, shape))}/{k}"
                out[name] = torch.from_numpy(randn(seed, k, shape))
    save_file(out, sys.argv[1])


if __name__ == "__main__":
    with np.errstate(over="ignore"):
        main()
