"""Session-wide set-up that must happen before any test module is imported.

Without a CUDA device the Triton kernels run in Triton's interpreter, which Triton only
enables when TRITON_INTERPRET is set before it is first imported; setting it here makes the
kernel tests run whatever the order in which pytest collects the folders.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
