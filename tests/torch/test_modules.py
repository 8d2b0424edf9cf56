"""bnlib.torch against torch.nn over hypothesis-generated configurations and step sequences."""

import copy

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

import bnlib.torch as bt

TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}
DTYPES = st.sampled_from([torch.float32, torch.float64])
PARITY = settings(deadline=None, max_examples=60, derandomize=True)
# With 2 values per normalised group the output is +-1 whatever the input, so the input
# gradient is 0 and what float32 computes is rounding noise scaled by 1/std: such groups are
# compared in float64 only.
FLOAT32_MIN_GROUP = 3


def _twin_modules(bnlib_module: nn.Module, torch_module: nn.Module, generator) -> None:
    """Give the torch module random parameters and copy its whole state into bnlib's."""
    with torch.no_grad():
        for parameter in torch_module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + 1)
    bnlib_module.load_state_dict(torch_module.state_dict())


def _step(module: nn.Module, x: torch.Tensor, training: bool, upstream: torch.Tensor) -> dict:
    """One forward/backward step; returns output, grads (accumulated) and buffers by name."""
    module.train(training)
    x = x.clone().requires_grad_()
    output = module(x)
    output.backward(upstream.to(output.dtype))
    results = {"output": output.detach(), "input grad": x.grad}
    results |= {f"{name}.grad": p.grad.clone() for name, p in module.named_parameters()}
    results |= {name: b.clone() for name, b in module.named_buffers()}
    return results


def _assert_step_matches(ours: dict, theirs: dict, exact: dict | None, dtype, step: int) -> None:
    """float64: bnlib equals torch within 1e-10. float32: bnlib is within 1e-5 (relative to
    the tensor's magnitude) of torch's float64 result, plus twice torch float32's own error."""
    assert ours.keys() == theirs.keys()
    for name, expected in theirs.items():
        actual = ours[name]
        assert actual.dtype == expected.dtype, name
        if exact is None:
            assert_close(actual, expected, **TOLERANCES[dtype], msg=f"{name} at step {step}")
            continue
        reference = exact[name].to(torch.float64)
        scale = max(1.0, reference.abs().max().item()) if reference.numel() else 1.0
        allowed = 1e-5 * scale + 1e-5 * reference.abs() + 2 * (expected - reference).abs()
        error = (actual.to(torch.float64) - reference).abs()
        assert (error <= allowed).all(), f"{name} at step {step}: error {error.max():.3g}"


def _run_and_compare(bnlib_module, torch_module, inputs, modes, dtype):
    """Train/eval steps through bnlib's and torch's modules (and, for float32, a float64 copy
    of torch's as the exact reference); compare outputs, grads, buffers and state_dict keys."""
    exact_module = copy.deepcopy(torch_module).double() if dtype == torch.float32 else None
    generator = torch.Generator().manual_seed(len(inputs))
    for step, (x, training) in enumerate(zip(inputs, modes, strict=True)):
        upstream = torch.randn(x.shape, generator=generator, dtype=dtype)
        theirs = _step(torch_module, x, training, upstream)
        ours = _step(bnlib_module, x, training, upstream)
        exact = (
            None if exact_module is None else _step(exact_module, x.double(), training, upstream)
        )
        _assert_step_matches(ours, theirs, exact, dtype, step)
    assert bnlib_module.state_dict().keys() == torch_module.state_dict().keys()


BATCHNORM_CLASSES = {
    1: (bt.BatchNorm1d, nn.BatchNorm1d),
    2: (bt.BatchNorm2d, nn.BatchNorm2d),
    3: (bt.BatchNorm3d, nn.BatchNorm3d),
}


@st.composite
def batchnorm_shapes(draw):
    """(spatial_dims, shape): BN1d without or with a length, BN2d/BN3d incl. 1x1 spatial."""
    spatial_dims = draw(st.sampled_from([0, 1, 2, 3]))
    batch = draw(st.sampled_from([2, 3, 5]))
    channels = draw(st.integers(1, 4))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(spatial_dims))
    return spatial_dims, (batch, channels, *spatial)


@PARITY
@given(
    dims_and_shape=batchnorm_shapes(),
    momentum=st.sampled_from([0.1, None, 0.0, 1.0]),
    affine=st.booleans(),
    track_running_stats=st.booleans(),
    dtype=DTYPES,
    modes=st.lists(st.booleans(), min_size=5, max_size=7),
    seed=st.integers(0, 2**16),
)
def test_batchnorm_matches_torch(
    dims_and_shape, momentum, affine, track_running_stats, dtype, modes, seed
):
    spatial_dims, shape = dims_and_shape
    assume(dtype == torch.float64 or shape[0] * torch.Size(shape[2:]).numel() >= FLOAT32_MIN_GROUP)
    bnlib_class, torch_class = BATCHNORM_CLASSES[max(spatial_dims, 1)]
    kwargs = dict(
        momentum=momentum, affine=affine, track_running_stats=track_running_stats, dtype=dtype
    )
    generator = torch.Generator().manual_seed(seed)
    bnlib_module = bnlib_class(shape[1], **kwargs)
    torch_module = torch_class(shape[1], **kwargs)
    _twin_modules(bnlib_module, torch_module, generator)
    inputs = [torch.randn(shape, generator=generator, dtype=dtype) * 2 + 3 for _ in modes]
    _run_and_compare(bnlib_module, torch_module, inputs, modes, dtype)


@PARITY
@given(
    normalized_shape=st.sampled_from([(5,), (3, 4), (2, 3, 2), (1,)]),
    leading=st.sampled_from([(), (1,), (4,), (2, 3)]),
    elementwise_affine=st.booleans(),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_layernorm_matches_torch(
    normalized_shape, leading, elementwise_affine, bias, eps, dtype, seed
):
    assume(dtype == torch.float64 or torch.Size(normalized_shape).numel() >= FLOAT32_MIN_GROUP)
    kwargs = dict(eps=eps, elementwise_affine=elementwise_affine, bias=bias, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    bnlib_module = bt.LayerNorm(normalized_shape, **kwargs)
    torch_module = nn.LayerNorm(normalized_shape, **kwargs)
    _twin_modules(bnlib_module, torch_module, generator)
    shape = leading + normalized_shape
    inputs = [torch.randn(shape, generator=generator, dtype=dtype) * 3 - 1 for _ in range(5)]
    _run_and_compare(bnlib_module, torch_module, inputs, [True, True, False, True, False], dtype)


@PARITY
@given(
    groups_and_channels=st.sampled_from([(1, 3), (2, 4), (3, 6), (4, 4), (2, 8)]),
    spatial=st.sampled_from([(), (1,), (5,), (2, 3), (1, 1, 2)]),
    batch=st.sampled_from([1, 2, 3]),
    affine=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_groupnorm_matches_torch(groups_and_channels, spatial, batch, affine, dtype, seed):
    num_groups, channels = groups_and_channels
    # One value per group raises in both libraries (tested with the errors).
    assume(batch * channels // num_groups * torch.Size(spatial).numel() > 1)
    group_size = channels // num_groups * torch.Size(spatial).numel()
    assume(dtype == torch.float64 or group_size >= FLOAT32_MIN_GROUP)
    generator = torch.Generator().manual_seed(seed)
    bnlib_module = bt.GroupNorm(num_groups, channels, affine=affine, dtype=dtype)
    torch_module = nn.GroupNorm(num_groups, channels, affine=affine, dtype=dtype)
    _twin_modules(bnlib_module, torch_module, generator)
    shape = (batch, channels, *spatial)
    inputs = [torch.randn(shape, generator=generator, dtype=dtype) + 2 for _ in range(5)]
    _run_and_compare(bnlib_module, torch_module, inputs, [True] * 3 + [False] * 2, dtype)


@PARITY
@given(
    normalized_shape=st.sampled_from([(5,), (3, 4), (1,)]),
    leading=st.sampled_from([(), (4,), (2, 3)]),
    elementwise_affine=st.booleans(),
    eps=st.sampled_from([None, 1e-6, 1e-2]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_rmsnorm_matches_torch(normalized_shape, leading, elementwise_affine, eps, dtype, seed):
    kwargs = dict(eps=eps, elementwise_affine=elementwise_affine, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    bnlib_module = bt.RMSNorm(normalized_shape, **kwargs)
    torch_module = nn.RMSNorm(normalized_shape, **kwargs)
    _twin_modules(bnlib_module, torch_module, generator)
    shape = leading + normalized_shape
    inputs = [torch.randn(shape, generator=generator, dtype=dtype) + 0.5 for _ in range(5)]
    _run_and_compare(bnlib_module, torch_module, inputs, [True] * 5, dtype)


@pytest.mark.parametrize(
    "functional", ["batch_norm_train", "batch_norm_eval", "layer_norm", "group_norm", "rms_norm"]
)
def test_functional_forms_match_torch(functional):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64)
    row_weight, row_bias = weight[:5], bias[:5]
    stats = (torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5)
    calls = {
        "batch_norm_train": lambda f: f.batch_norm(
            x, *[s.clone() for s in stats], weight, bias, training=True, momentum=0.3, eps=1e-3
        ),
        "batch_norm_eval": lambda f: f.batch_norm(x, *stats, weight, bias, eps=1e-3),
        "layer_norm": lambda f: f.layer_norm(x, (5,), row_weight, row_bias, eps=1e-4),
        "group_norm": lambda f: f.group_norm(x, 3, weight, bias, eps=1e-4),
        "rms_norm": lambda f: f.rms_norm(x, [5], row_weight, eps=1e-4),
    }
    assert_close(calls[functional](bt), calls[functional](nn.functional), **TOLERANCES[x.dtype])
