"""Shared fixtures and hypothesis profiles.

Profiles (python-zstandard style), picked with SLCODEC_HYPOTHESIS_PROFILE:
``default`` (a quick run), ``ci`` (what .ci/run uses), ``expensive`` (long local runs).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# A vq fit uses torch's own thread count unless fit_threads says otherwise (issue 11). The suite
# runs on shared 2-core machines, where a second spinning thread per process made a fit 17x
# slower (BENCHMARKS.md section 10): one torch thread in this process and in the CLI subprocesses
# the tests start (set before any test module imports torch).
os.environ.setdefault("OMP_NUM_THREADS", "1")

settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("expensive", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SLCODEC_HYPOTHESIS_PROFILE", "default"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")


@pytest.fixture(scope="session")
def real_labels():
    """The committed real-teacher fixture: EfficientNet-Lite0 logits [8, 64, 1000], FP16."""
    return np.load(FIXTURE)


@pytest.fixture
def small_logits():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3, 5, 20)) * 3).astype(np.float32)


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``slcodec ARGS`` in this process: (exit code, stdout, stderr)."""
    from slcodec.cli import main

    def call(*args):
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err
    return call
