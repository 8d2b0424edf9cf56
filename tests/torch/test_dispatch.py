"""The choice of backend, independence from torch's own normalization kernels, and state
dicts exchanged both ways with torch.nn."""

import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

import bnlib.torch as bt
from bnlib.torch import _dispatch

PAIRS = [
    (lambda m: m.BatchNorm1d(4), (6, 4)),
    (lambda m: m.BatchNorm2d(4, affine=False), (3, 4, 2, 2)),
    (lambda m: m.BatchNorm3d(4, momentum=None), (2, 4, 2, 2, 2)),
    (lambda m: m.LayerNorm((4, 2), bias=False), (3, 4, 2)),
    (lambda m: m.GroupNorm(2, 4), (3, 4, 5)),
    (lambda m: m.RMSNorm(4, eps=1e-4), (3, 4)),
]


def _trained(module: nn.Module, shape) -> nn.Module:
    """The module after a few training steps and with perturbed parameters."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    for _ in range(3):
        module(torch.randn(shape, generator=generator) * 2 + 1)
    return module


@pytest.mark.parametrize(("factory", "shape"), PAIRS)
@pytest.mark.parametrize("direction", ["torch_to_bnlib", "bnlib_to_torch"])
def test_load_state_dict_both_ways(factory, shape, direction):
    source_lib, target_lib = (nn, bt) if direction == "torch_to_bnlib" else (bt, nn)
    source = _trained(factory(source_lib), shape)
    target = factory(target_lib)
    target.load_state_dict(source.state_dict())  # strict: same keys, shapes and dtypes
    for (name, expected), (_, actual) in zip(
        source.state_dict().items(), target.state_dict().items(), strict=True
    ):
        assert torch.equal(actual, expected), name
    x = torch.randn(shape)
    assert_close(target.eval()(x), source.eval()(x))


def test_state_dict_keys_and_metadata_version_match_torch():
    ours, theirs = bt.BatchNorm2d(3).state_dict(), nn.BatchNorm2d(3).state_dict()
    assert list(ours) == list(theirs)
    assert ours._metadata[""]["version"] == theirs._metadata[""]["version"] == 2


def test_modules_nest_inside_torch_models():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), bt.BatchNorm2d(4), nn.ReLU())
    torch_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    torch_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 6, 6)
    assert_close(model(x), torch_model(x))
    assert isinstance(model[1], nn.Module)


TORCH_NORM_FUNCTIONS = [
    (nn.functional, "batch_norm"),
    (nn.functional, "layer_norm"),
    (nn.functional, "group_norm"),
    (nn.functional, "rms_norm"),
    (nn.functional, "instance_norm"),
    (torch, "batch_norm"),
    (torch, "instance_norm"),
    (torch, "layer_norm"),
    (torch, "group_norm"),
    (torch, "rms_norm"),
    (torch, "native_batch_norm"),
    (torch, "native_layer_norm"),
    (torch, "native_group_norm"),
]
TORCH_NORM_OP = re.compile(r"batch_norm|layer_norm|group_norm|rms_norm|instance_norm")


class _RecordOps(TorchDispatchMode):
    """Records the name of every ATen op that runs (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _exercise_every_op():
    x = torch.randn(4, 6, 3, requires_grad=True)
    outputs = [
        bt.BatchNorm1d(6)(x),
        bt.BatchNorm1d(6).eval()(x),
        bt.LayerNorm(3)(x),
        bt.GroupNorm(3, 6)(x),
        bt.RMSNorm(3)(x),
        bt.InstanceNorm1d(6, affine=True, track_running_stats=True)(x),
    ]
    torch.stack(outputs).sum().backward()
    return x.grad


def test_no_call_to_torch_normalisation_functions(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch's own normalisation was called")

    for owner, name in TORCH_NORM_FUNCTIONS:
        monkeypatch.setattr(owner, name, forbidden)
    assert torch.isfinite(_exercise_every_op()).all()


def test_no_torch_normalisation_kernel_runs():
    with _RecordOps() as recorder:
        _exercise_every_op()
    assert recorder.names, "the recorder saw no ops"
    assert not [name for name in recorder.names if TORCH_NORM_OP.search(name)]


def test_set_backend_validates_its_argument():
    with pytest.raises(
        ValueError,
        match=re.escape("backend must be one of ('auto', 'triton', 'composite'), got 'cuda'"),
    ):
        bt.set_backend("cuda")


def test_cpu_tensors_take_the_composite_path_by_default():
    assert bt.get_backend() == "auto"
    assert bt.backend_name(torch.randn(2, 3)) == "composite"
    bt.set_backend("composite")
    assert bt.backend_name(torch.randn(2, 3)) == "composite"


@pytest.fixture
def uncached_triton(monkeypatch):
    """Forget whether the Triton backend was loaded, so a test can fake its import."""
    monkeypatch.setattr(_dispatch, "_triton_module", None)
    monkeypatch.setattr(_dispatch, "_triton_error", None)
    return monkeypatch


def test_forcing_an_unimportable_triton_backend_says_why(uncached_triton):
    def fail_import(name):
        raise ImportError("No module named 'triton'")

    uncached_triton.setattr(_dispatch.importlib, "import_module", fail_import)
    bt.set_backend("triton")
    message = (
        "the triton backend was requested but importing bnlib.torch._triton failed: "
        "No module named 'triton'"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.backend_name(torch.randn(2, 3))
    bt.set_backend("auto")
    assert bt.backend_name(torch.randn(2, 3)) == "composite"


def test_forcing_an_unavailable_triton_backend_says_why(uncached_triton):
    unavailable = SimpleNamespace(available=lambda: False)
    uncached_triton.setattr(_dispatch.importlib, "import_module", lambda name: unavailable)
    bt.set_backend("triton")
    message = "the triton backend was requested but bnlib.torch._triton.available() returned False"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.backend_name(torch.randn(2, 3))


TRITON_INTERPRETED_CHECK = """
import torch, bnlib.torch as bt
from torch.testing import assert_close
x = torch.randn(6, 4, 3, dtype=torch.float32) * 2 + 1
w, b = torch.rand(4) + 0.5, torch.randn(4)
results = {}
for backend in ("composite", "triton"):
    bt.set_backend(backend)
    assert bt.backend_name(x) == backend
    xs = x.clone().requires_grad_()
    rm, rv = torch.zeros(4), torch.ones(4)
    y = bt.batch_norm(xs, rm, rv, w, b, training=True) + bt.layer_norm(xs, (3,))
    y.backward(torch.ones_like(y))
    results[backend] = (y.detach(), xs.grad, rm, rv, bt.batch_norm(x, rm, rv, w, b))
for ours, theirs in zip(results["triton"], results["composite"]):
    assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.skipif(find_spec("bnlib.torch._triton") is None, reason="no triton backend")
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="with a GPU the compiled kernels are tested (tests/torch/kernels)")
def test_triton_backend_plugs_in_under_the_interpreter():
    """The Triton backend honours the backend contract (run on CPU by Triton's interpreter)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", TRITON_INTERPRETED_CHECK],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
