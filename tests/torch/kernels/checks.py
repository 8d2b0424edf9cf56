"""Tolerances and comparisons shared by the kernel tests.

Outputs stored in the input dtype are compared with ``atol = rtol`` of a few units of its
rounding: float32 2e-5, float16 2e-3, bfloat16 2e-2. Statistics and parameter gradients are
float32 whatever the input dtype and are compared at float32 tolerances.
"""

import torch

OUTPUT_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = list(OUTPUT_TOL)
EPS = 1e-5


def assert_output(actual, expected, dtype):
    """``actual`` has ``dtype`` and matches the float64 ``expected`` to that dtype's rounding."""
    tol = OUTPUT_TOL[dtype]
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double().cpu(), expected, atol=tol, rtol=tol)


def assert_float32(actual, expected, tol=1e-5):
    """``actual`` is float32 and matches the float64 ``expected`` within ``tol``."""
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double().cpu(), expected, atol=tol, rtol=tol)
