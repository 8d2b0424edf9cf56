"""Triton kernels behind :mod:`bnlib.torch._triton` (batch norm and layer norm).

The kernels are decorated when this package is imported, so ``TRITON_INTERPRET=1`` (run them
on the CPU with Triton's interpreter) must be set before the first import.
"""
