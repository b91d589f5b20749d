"""Shared pytest setup: hypothesis profiles and the device fixture.

Profiles: ``dev`` (default locally, thorough), ``ci`` (default when ``CI`` is set, bounded),
chosen explicitly with ``HYPOTHESIS_PROFILE``.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _cuda_reason():
    from minicnn import backend
    try:
        backend.get("cuda")
    except backend.BackendUnavailable as err:
        return str(err)
    except ImportError as err:    # the CUDA backend module itself is missing
        return f"CUDA backend not importable: {err}"
    return None


@pytest.fixture(params=["cpu", "cuda"], scope="session")
def device(request):
    """Run a test once per backend; the CUDA run skips, with the reason, where no GPU is usable
    (and fails instead when ``MINICNN_TEST_CUDA=1``, as on the GPU machine, so that a broken
    CuPy install cannot pass as a row of skips)."""
    if request.param == "cuda":
        reason = _cuda_reason()
        if reason and os.environ.get("MINICNN_TEST_CUDA") == "1":
            pytest.fail(f"MINICNN_TEST_CUDA=1 but the CUDA backend is unavailable: {reason}")
        if reason:
            pytest.skip(f"CUDA backend unavailable: {reason}")
    return request.param
