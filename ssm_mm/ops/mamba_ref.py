"""Import ``mamba_ssm`` / ``causal_conv1d`` on machines without their CUDA extensions.

Their pure-PyTorch references (``ssd_minimal_discrete``, ``selective_scan_ref``, ``causal_conv1d_ref``,
``causal_conv1d_update_ref``) are our independent parity twins, and their Triton SSD kernel is our
CUDA path. Both packages import compiled extensions at module level (``selective_scan_cuda``,
``causal_conv1d_cuda``) that a CPU build (``MAMBA_SKIP_CUDA_BUILD=TRUE``) does not have, so
``load_mamba_refs`` first puts empty stand-in modules for the *missing* ones into ``sys.modules``
(an extension that exists is never shadowed). Calling anything that needs a stubbed extension then
fails with an AttributeError on the stub, which only the CUDA-kernel entry points do.

The result is cached per process: the first call does the (slow, ~5 s) import, later calls are free,
and a failure is not retried (re-importing ``causal_conv1d`` would re-register its torch.library ops).
On failure every module the attempt added under ``mamba_ssm``/``causal_conv1d`` and every stub is
removed again, so nothing half-imported is left behind.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import SimpleNamespace

__all__ = ["load_mamba_refs", "mamba_refs_error"]

# Compiled extensions imported at module level by mamba_ssm 2.x / causal_conv1d 1.x -> their package.
_EXTENSIONS = {"selective_scan_cuda": "mamba_ssm", "causal_conv1d_cuda": "causal_conv1d"}
_PACKAGES = ("mamba_ssm", "causal_conv1d")

_cache: dict[str, object] = {}


def _extension_exists(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_refs(stubbed: list[str]) -> SimpleNamespace:
    for name, package in _EXTENSIONS.items():
        if not _extension_exists(name) and _extension_exists(package):
            stub = types.ModuleType(name)
            stub.__doc__ = "Empty stand-in inserted by ssm_mm.ops.mamba_ref (CUDA extension not built)."
            sys.modules[name] = stub
            stubbed.append(name)
    ssd_minimal = importlib.import_module("mamba_ssm.modules.ssd_minimal")
    selective = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    ssd_combined = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    refs = SimpleNamespace(
        ssd_minimal_discrete=ssd_minimal.ssd_minimal_discrete,
        selective_scan_ref=selective.selective_scan_ref,
        # Triton kernel: usable on CUDA devices only.
        mamba_chunk_scan_combined=ssd_combined.mamba_chunk_scan_combined,
        mamba_ssm_version=getattr(sys.modules.get("mamba_ssm"), "__version__", "?"),
        stubbed=tuple(stubbed),
        causal_conv1d_ref=None,
        causal_conv1d_update_ref=None,
        causal_conv1d_fn=None,
        causal_conv1d_update=None,
        has_causal_conv1d_cuda=False,
        causal_conv1d_error=None,
    )
    # causal_conv1d is optional (e.g. the GPU machine carries only a mamba_ssm wheel): without it the
    # SSD references and kernel are still returned, with the conv fields left None.
    before = set(sys.modules)
    try:
        conv = importlib.import_module("causal_conv1d.causal_conv1d_interface")
    except Exception as exc:
        refs.causal_conv1d_error = f"{type(exc).__name__}: {exc}"
        _forget(set(sys.modules) - before, ())
        return refs
    refs.causal_conv1d_ref = conv.causal_conv1d_ref
    refs.causal_conv1d_update_ref = conv.causal_conv1d_update_ref
    # CUDA conv kernels: usable only when the real extension was found (not stubbed).
    refs.causal_conv1d_fn = conv.causal_conv1d_fn
    refs.causal_conv1d_update = conv.causal_conv1d_update
    refs.has_causal_conv1d_cuda = "causal_conv1d_cuda" not in stubbed
    return refs


def _forget(new_modules: set[str], stubbed) -> None:
    """Drop what a failed import attempt added under our packages, and the stubs."""
    for name in new_modules:
        if name in stubbed or name.split(".")[0] in _PACKAGES:
            del sys.modules[name]
    for name in stubbed:
        sys.modules.pop(name, None)


def load_mamba_refs() -> SimpleNamespace | None:
    """Import mamba_ssm's and causal_conv1d's references; None (see ``mamba_refs_error``) if impossible.

    Returns a namespace with ``ssd_minimal_discrete``, ``selective_scan_ref`` (pure PyTorch, any
    device), ``mamba_chunk_scan_combined`` (Triton, CUDA only), ``causal_conv1d_ref``,
    ``causal_conv1d_update_ref`` (pure PyTorch; None when causal_conv1d is not installed, see
    ``causal_conv1d_error``), ``causal_conv1d_fn`` / ``causal_conv1d_update`` (CUDA extension; only
    usable when ``has_causal_conv1d_cuda``), ``stubbed`` (names of stand-in extension modules) and
    ``mamba_ssm_version``. mamba_ssm is required; causal_conv1d is optional.
    """
    if "refs" in _cache:
        return _cache["refs"]  # type: ignore[return-value]
    before = set(sys.modules)
    stubbed: list[str] = []
    try:
        refs = _import_refs(stubbed)
        error = None
    except Exception as exc:  # ImportError, but also anything a half-installed package raises
        refs = None
        error = f"{type(exc).__name__}: {exc}"
        _forget(set(sys.modules) - before, stubbed)
    _cache["refs"] = refs
    _cache["error"] = error
    return refs


def mamba_refs_error() -> str | None:
    """Why ``load_mamba_refs`` returned None (None if it succeeded or was not called yet)."""
    return _cache.get("error")  # type: ignore[return-value]
