"""gradcheck and gradgradcheck in float64 for every op, and the invariants of the backward."""

import pytest
import torch
from torch.testing import assert_close

import bnlib.torch as bt


def _f64(*shape, requires_grad=True, seed=0):
    generator = torch.Generator().manual_seed(seed + sum(shape))
    tensor = torch.randn(shape, generator=generator, dtype=torch.float64)
    return tensor.requires_grad_(requires_grad)


TINY_EPS = 1e-30  # makes sum(xhat**2) equal the group size, so the invariants hold exactly
RUNNING_MEAN = _f64(3, requires_grad=False, seed=1)
RUNNING_VAR = _f64(3, requires_grad=False, seed=2).abs() + 0.5

# name -> (function of the differentiable tensors, the tensors)
CASES = {
    "batch_norm_train": (
        lambda x, w, b: bt.batch_norm(x, None, None, w, b, training=True),
        (_f64(4, 3, 2), _f64(3), _f64(3)),
    ),
    "batch_norm_train_no_affine": (
        lambda x: bt.batch_norm(x, None, None, training=True),
        (_f64(5, 3),),
    ),
    "batch_norm_train_2d_channels_last": (
        lambda x, w, b: bt.batch_norm(x, None, None, w, b, training=True),
        (
            _f64(2, 3, 2, 2, requires_grad=False)
            .to(memory_format=torch.channels_last)
            .requires_grad_(),
            _f64(3),
            _f64(3),
        ),
    ),
    "batch_norm_eval": (
        lambda x, w, b: bt.batch_norm(x, RUNNING_MEAN, RUNNING_VAR, w, b, eps=1e-3),
        (_f64(4, 3, 2), _f64(3), _f64(3)),
    ),
    "layer_norm": (
        lambda x, w, b: bt.layer_norm(x, (2, 3), w, b),
        (_f64(3, 2, 3), _f64(2, 3), _f64(2, 3)),
    ),
    "layer_norm_bias_only": (
        lambda x, b: bt.layer_norm(x, (4,), None, b),
        (_f64(3, 4), _f64(4)),
    ),
    "group_norm": (
        lambda x, w, b: bt.group_norm(x, 2, w, b),
        (_f64(2, 4, 3), _f64(4), _f64(4)),
    ),
    "group_norm_no_affine": (
        lambda x: bt.group_norm(x, 3, eps=1e-3),
        (_f64(2, 6, 2, 2),),
    ),
    "rms_norm": (
        lambda x, w: bt.rms_norm(x, (5,), w),
        (_f64(3, 5), _f64(5)),
    ),
    "rms_norm_no_weight": (
        lambda x: bt.rms_norm(x, (2, 3), eps=1e-3),
        (_f64(4, 2, 3),),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    function, inputs = CASES[name]
    assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("name", CASES)
def test_gradgradcheck(name):
    function, inputs = CASES[name]
    assert torch.autograd.gradgradcheck(function, inputs)


def _normalised_and_grad(function, x, upstream):
    x = x.detach().requires_grad_()
    y = function(x)
    y.backward(upstream)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_norm_input_grad_is_orthogonal_to_one_and_xhat_per_channel(dtype):
    """With weight 1: sum(dx) = 0 and sum(dx * xhat) = 0 over each channel's N*H*W values
    (exactly so when eps is negligible: then sum(xhat**2) = M)."""
    x = torch.randn(6, 3, 4, 4, dtype=dtype) * 3 + 2
    upstream = torch.randn_like(x)
    xhat, dx = _normalised_and_grad(
        lambda v: bt.batch_norm(v, None, None, training=True, eps=TINY_EPS), x, upstream
    )
    dims = (0, 2, 3)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-11
    assert_close(dx.sum(dim=dims), torch.zeros(3, dtype=dtype), rtol=0, atol=tolerance)
    assert_close((dx * xhat).sum(dim=dims), torch.zeros(3, dtype=dtype), rtol=0, atol=tolerance)


def test_layer_and_group_norm_input_grads_are_orthogonal_to_one_and_xhat_per_group():
    x = torch.randn(4, 6, 5, dtype=torch.float64) * 2 - 1
    upstream = torch.randn_like(x)
    xhat, dx = _normalised_and_grad(lambda v: bt.layer_norm(v, (6, 5), eps=TINY_EPS), x, upstream)
    assert_close(dx.sum(dim=(1, 2)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-11)
    assert_close(
        (dx * xhat).sum(dim=(1, 2)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-11
    )
    xhat, dx = _normalised_and_grad(lambda v: bt.group_norm(v, 3, eps=TINY_EPS), x, upstream)
    groups = (4, 3, 10)
    assert_close(
        dx.reshape(groups).sum(-1), torch.zeros(4, 3, dtype=torch.float64), rtol=0, atol=1e-11
    )
    assert_close(
        (dx * xhat).reshape(groups).sum(-1),
        torch.zeros(4, 3, dtype=torch.float64),
        rtol=0,
        atol=1e-11,
    )


def test_rms_norm_input_grad_is_orthogonal_to_x_per_row():
    """RMS norm is invariant to scaling each row, so sum(dx * x) = 0 per row."""
    x = torch.randn(5, 7, dtype=torch.float64) + 1
    _, dx = _normalised_and_grad(lambda v: bt.rms_norm(v, (7,), eps=0.0), x, torch.randn_like(x))
    assert_close((dx * x).sum(-1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-11)


def test_parameter_grads_have_the_parameter_dtype_for_reduced_precision_input():
    module = bt.BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2).bfloat16().requires_grad_()
    module(x).float().pow(2).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert module.weight.grad.dtype == module.bias.grad.dtype == torch.float32


# torch.func and forward-mode AD: every transform against torch's own ops, in float64.

D = torch.float64
RUNNING = (_f64(3, requires_grad=False, seed=3), _f64(3, requires_grad=False, seed=4).abs() + 0.5)
# name -> (bnlib's op, torch's op, arguments): ops of (x, weight, bias) returning one tensor.
FUNC_CASES = {
    "batch_norm_train": (
        lambda lib, x, w, b: lib.batch_norm(x, None, None, w, b, training=True),
        (_f64(4, 3, 5), _f64(3), _f64(3)),
    ),
    "batch_norm_eval": (
        lambda lib, x, w, b: lib.batch_norm(x, *RUNNING, w, b),
        (_f64(4, 3, 5), _f64(3), _f64(3)),
    ),
    "instance_norm": (
        lambda lib, x, w, b: lib.instance_norm(x, weight=w, bias=b),
        (_f64(4, 3, 5), _f64(3), _f64(3)),
    ),
    "layer_norm": (
        lambda lib, x, w, b: lib.layer_norm(x, (2, 5), w, b),
        (_f64(3, 2, 5), _f64(2, 5), _f64(2, 5)),
    ),
    "group_norm": (
        lambda lib, x, w, b: lib.group_norm(x, 3, w, b),
        (_f64(2, 6, 4), _f64(6), _f64(6)),
    ),
    "rms_norm": (
        lambda lib, x, w, b: lib.rms_norm(x, (5,), w) + b,
        (_f64(4, 5), _f64(5), _f64(5)),
    ),
}
TRANSFORMS = {
    "grad": lambda f, args: torch.func.grad(
        lambda *a: f(*a).square().sum(), argnums=(0, 1, 2))(*args),
    "jacrev": lambda f, args: torch.func.jacrev(f, argnums=(0, 1, 2))(*args),
    "jacfwd": lambda f, args: torch.func.jacfwd(f, argnums=(0, 1, 2))(*args),
    "jvp": lambda f, args: torch.func.jvp(f, args, tuple(torch.ones_like(a) * 0.3 for a in args)),
    "hessian": lambda f, args: torch.func.hessian(lambda x: f(x, *args[1:]).square().sum())(
        args[0]),
    "vmap_input": lambda f, args: torch.func.vmap(f, in_dims=(1, None, None))(
        torch.stack([args[0], args[0] * 2 - 1], dim=1), *args[1:]),
    "vmap_all": lambda f, args: torch.func.vmap(f)(
        *(torch.stack([a, a.flip(0) + 0.5]) for a in args)),
    "vmap_of_grad": lambda f, args: torch.func.vmap(
        torch.func.grad(lambda x, w, b: f(x, w, b).square().sum()), in_dims=(0, None, None))(
        torch.stack([args[0], args[0] * 3]), *args[1:]),
}


def _detached(args):
    return tuple(a.detach() for a in args)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("name", FUNC_CASES)
def test_torch_func_transforms_give_torchs_results(name, transform):
    op, args = FUNC_CASES[name]
    ours = TRANSFORMS[transform](lambda *a: op(bt, *a), _detached(args))
    theirs = TRANSFORMS[transform](lambda *a: op(torch.nn.functional, *a), _detached(args))
    assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", FUNC_CASES)
def test_forward_mode_ad_gives_torchs_tangents(name):
    op, args = FUNC_CASES[name]
    tangents = [torch.randn_like(a) for a in args]
    results = {}
    for lib in (bt, torch.nn.functional):
        with torch.autograd.forward_ad.dual_level():
            duals = [torch.autograd.forward_ad.make_dual(a.detach(), t)
                     for a, t in zip(args, tangents, strict=True)]
            results[lib] = torch.autograd.forward_ad.unpack_dual(op(lib, *duals))
    ours, theirs = results[bt], results[torch.nn.functional]
    assert_close(ours.primal, theirs.primal, rtol=1e-10, atol=1e-10)
    assert_close(ours.tangent, theirs.tangent, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_gradcheck_forward_ad_and_batched_grads(name):
    function, inputs = CASES[name]
    assert torch.autograd.gradcheck(function, inputs, check_forward_ad=True,
                                    check_batched_grad=True, check_batched_forward_grad=True)


@pytest.mark.parametrize("name", ["batch_norm_train", "layer_norm", "group_norm", "rms_norm"])
def test_forward_over_reverse(name):
    function, inputs = CASES[name]
    assert torch.autograd.gradgradcheck(function, inputs, check_fwd_over_rev=True,
                                        check_rev_over_rev=True)


@pytest.mark.parametrize(
    ("function", "shape"),
    [
        (lambda x, w, b: bt.layer_norm(x, (4,), w, b), (0, 4)),
        (lambda x, w, b: bt.group_norm(x, 2, w, b), (0, 4, 3)),
        (lambda x, w, b: bt.batch_norm(x, None, None, w, b, training=True), (0, 4, 3)),
    ],
    ids=["layer_norm", "group_norm", "batch_norm"],
)
def test_double_backward_of_an_empty_batch(function, shape):
    """The input gradient of an empty batch is built inside the graph, as torch's is."""
    x = torch.randn(shape, dtype=D, requires_grad=True)
    w, b = torch.rand(4, dtype=D, requires_grad=True), torch.randn(4, dtype=D, requires_grad=True)
    (dx,) = torch.autograd.grad(function(x, w, b).sum(), x, create_graph=True)
    assert dx.shape == shape and dx.requires_grad
    assert torch.autograd.gradgradcheck(function, (x, w, b))


@pytest.mark.parametrize(
    ("function", "shape", "torch_function"),
    [
        (lambda x: bt.rms_norm(x, (5,)), (2, 3, 4, 5), lambda x: torch.nn.functional.rms_norm(
            x, (5,))),
        (lambda x: bt.layer_norm(x, (4, 5)), (2, 3, 4, 5),
         lambda x: torch.nn.functional.layer_norm(x, (4, 5))),
        (lambda x: bt.group_norm(x, 3), (2, 3, 4, 5),
         lambda x: torch.nn.functional.group_norm(x, 3)),
    ],
    ids=["rms_norm", "layer_norm", "group_norm"],
)
def test_channels_last_input_gets_a_channels_last_gradient(function, shape, torch_function):
    """The output's layout is torch's (contiguous for layer norm), and so is the gradient's."""
    x = torch.randn(shape, dtype=D).to(memory_format=torch.channels_last)
    for op, leaf in ((function, x.clone().requires_grad_()),
                     (torch_function, x.clone().requires_grad_())):
        y = op(leaf)
        y.backward(torch.ones_like(y))
    ours, theirs = function(x), torch_function(x)
    assert ours.is_contiguous() == theirs.is_contiguous()
    leaf = x.clone().requires_grad_()
    function(leaf).sum().backward()
    assert leaf.grad.is_contiguous(memory_format=torch.channels_last)
    assert_close(ours, theirs)
