"""Shared test setup: hypothesis profiles and the import path.

Profiles: `dev` (default, quick), `ci` (more examples, no deadline; CI sets HYPOTHESIS_PROFILE=ci).
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long run (e.g. every layer shape of every network on the "
                            "emulator, tests/test_kernels_sweep.py); skipped unless selected: pytest -m slow")


def pytest_collection_modifyitems(config, items):
    """Skip `slow` tests unless the -m expression names them (pytest -m slow, -m 'slow or not slow')."""
    if "slow" in (config.getoption("-m") or ""):
        return
    import pytest
    skip = pytest.mark.skip(reason="slow: run with pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
