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
