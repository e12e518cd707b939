"""Fixtures for the ops tests: mamba_ssm's pure-PyTorch references, when installed."""

from __future__ import annotations

import pytest

from ssm_mm.ops.mamba_ref import load_mamba_refs, mamba_refs_error


@pytest.fixture(scope="session")
def mamba_refs():
    """mamba_ssm / causal_conv1d references (skips the test with the reason when not importable)."""
    refs = load_mamba_refs()
    if refs is None:
        pytest.skip(f"mamba_ssm references not importable: {mamba_refs_error()}")
    return refs


@pytest.fixture(scope="session")
def conv_refs(mamba_refs):
    """The causal_conv1d references (skips when causal_conv1d is not installed)."""
    if mamba_refs.causal_conv1d_ref is None:
        pytest.skip(f"causal_conv1d not importable: {mamba_refs.causal_conv1d_error}")
    return mamba_refs
