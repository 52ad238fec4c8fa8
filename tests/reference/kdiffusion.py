"""Imports k-diffusion's `sampling` and `external` modules without its package __init__.

k-diffusion 0.1.1.post1's package imports its training stack (torchvision, kornia, clean-fid,
wandb ...). The samplers need none of it: `k_diffusion.utils` imports torchvision's functional
transforms only for image helpers the samplers never call, so an empty stand-in module suffices.
"""

import importlib.util
import sys
import types


def _install_stub(name: str) -> types.ModuleType:
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        sys.modules[name] = module
    return module


def load():
    """Returns (sampling, external) modules of k-diffusion."""
    if "k_diffusion.sampling" not in sys.modules:
        if importlib.util.find_spec("torchvision") is None:
            tv = _install_stub("torchvision")
            transforms = _install_stub("torchvision.transforms")
            functional = _install_stub("torchvision.transforms.functional")
            tv.transforms = transforms
            transforms.functional = functional
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            raise ImportError("k-diffusion is not installed; run scripts/setup")
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    import k_diffusion.external as external
    import k_diffusion.sampling as sampling

    return sampling, external
