"""bnlib.torch fails (or succeeds) exactly as torch.nn does: same error type, same message.

Each case is one call written once against a library namespace, run with ``torch.nn`` and
with ``bnlib.torch``; the deliberate differences are listed at the end, each with its reason.
"""

import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import bnlib.torch as bt
from bnlib.torch import validation

TORCH = SimpleNamespace(F=nn.functional, nn=nn)
BNLIB = SimpleNamespace(F=bt, nn=bt)
# Seeded: "negative eps" compares outputs where var + eps nears 0 for some draws.
SEEDED = torch.Generator().manual_seed(0)
X = torch.randn(4, 3, generator=SEEDED)
X3 = torch.randn(2, 3, 4, generator=SEEDED)
LONG = torch.ones(2, 3, dtype=torch.long)
COMPLEX = torch.ones(2, 3, dtype=torch.complex64)
BATCHES = torch.randn(2, 4, 3, 2, 2, generator=SEEDED)  # two (N, C, H, W) batches, for vmap

# name -> call(lib): one call in torch.nn's API, with lib.F the functional and lib.nn the modules.
CALLS = {
    "batch_norm, list weight": lambda lib: lib.F.batch_norm(X, None, None, [1.0] * 3),
    "batch_norm, list bias": lambda lib: lib.F.batch_norm(X, None, None, None, [0.0] * 3),
    "batch_norm, list running_mean": lambda lib: lib.F.batch_norm(X, [0.0] * 3, torch.ones(3)),
    "layer_norm, list weight": lambda lib: lib.F.layer_norm(X, (3,), [1.0] * 3),
    "layer_norm, list bias": lambda lib: lib.F.layer_norm(X, (3,), None, [0.0] * 3),
    "group_norm, list weight": lambda lib: lib.F.group_norm(X3, 1, [1.0] * 3),
    "rms_norm, list weight": lambda lib: lib.F.rms_norm(X, (3,), [1.0] * 3),
    "instance_norm, list weight": lambda lib: lib.F.instance_norm(X3, weight=[1.0] * 3),
    "instance_norm, list running_var": lambda lib: lib.F.instance_norm(
        X3, torch.zeros(3), [1.0] * 3),
    "empty float64 batch, float32 BatchNorm2d": lambda lib: lib.nn.BatchNorm2d(3)(
        torch.randn(0, 3, 2, 2, dtype=torch.float64)),
    "empty int batch, eval BatchNorm1d": lambda lib: lib.nn.BatchNorm1d(3).eval()(
        torch.zeros(0, 3, dtype=torch.long)),
    "empty batch, wrong weight size": lambda lib: lib.F.batch_norm(
        torch.randn(0, 3, 2), None, None, torch.ones(4), training=True),
    "empty batch, eval without running stats": lambda lib: lib.F.batch_norm(
        torch.randn(0, 3), None, None),
    "empty batch, negative eps": lambda lib: lib.F.batch_norm(
        torch.randn(0, 3), torch.zeros(3), torch.ones(3), eps=-1.0),
    "zero-size 1-D batch_norm": lambda lib: lib.F.batch_norm(
        torch.randn(0), None, None, training=True),
    "one value per channel, 1-D": lambda lib: lib.F.batch_norm(
        torch.randn(1), None, None, training=True),
    "LayerNorm, int input": lambda lib: lib.nn.LayerNorm(3)(LONG),
    "LayerNorm, complex input": lambda lib: lib.nn.LayerNorm(3)(COMPLEX),
    "layer_norm, complex input": lambda lib: lib.F.layer_norm(COMPLEX, (3,)),
    "GroupNorm, int input": lambda lib: lib.nn.GroupNorm(1, 3)(LONG),
    "GroupNorm, complex input": lambda lib: lib.nn.GroupNorm(1, 3)(COMPLEX),
    "group_norm without affine, int input": lambda lib: lib.nn.GroupNorm(1, 3, affine=False)(
        LONG),
    "BatchNorm1d, complex input": lambda lib: lib.nn.BatchNorm1d(3)(COMPLEX),
    "RMSNorm, 0-d input": lambda lib: lib.nn.RMSNorm(3)(torch.tensor(1.0)),
    "RMSNorm, 1-d input of the wrong size": lambda lib: lib.nn.RMSNorm(3)(torch.ones(2)),
    "rms_norm, empty normalized_shape on 0-d input": lambda lib: lib.F.rms_norm(
        torch.tensor(1.0), ()),
    "RMSNorm, int input": lambda lib: lib.nn.RMSNorm(3)(LONG),
    "LayerNorm, 1-d input of the wrong size": lambda lib: lib.nn.LayerNorm(3)(torch.ones(2)),
    "LayerNorm, float16 parameters": lambda lib: lib.nn.LayerNorm(3).half()(X),
    "instance_norm, one spatial value": lambda lib: lib.F.instance_norm(torch.randn(2, 10, 1)),
    "instance_norm, 2-d input": lambda lib: lib.F.instance_norm(torch.randn(2, 10)),
    "instance_norm, running_mean only": lambda lib: lib.F.instance_norm(
        X3, running_mean=torch.zeros(3)),
    "instance_norm, eval without running stats": lambda lib: lib.F.instance_norm(
        X3, use_input_stats=False),
    "instance_norm, weight of the wrong size (counts N * C)": lambda lib: lib.F.instance_norm(
        X3, weight=torch.ones(4)),
    "instance_norm, running_mean of the wrong size": lambda lib: lib.F.instance_norm(
        X3, torch.zeros(4), torch.ones(4)),
    "instance_norm, int input": lambda lib: lib.F.instance_norm(X3.long()),
    "instance_norm, float64 input, float32 weight": lambda lib: lib.F.instance_norm(
        X3.double(), weight=torch.ones(3)),
    "instance_norm, negative eps is not checked": lambda lib: lib.F.instance_norm(X3, eps=-0.5),
    "InstanceNorm1d, affine, wrong channel count": lambda lib: lib.nn.InstanceNorm1d(
        3, affine=True)(torch.randn(2, 4, 5)),
    "InstanceNorm1d, 4-d input": lambda lib: lib.nn.InstanceNorm1d(3)(torch.randn(2, 3, 4, 5)),
    "InstanceNorm2d, 2-d input": lambda lib: lib.nn.InstanceNorm2d(3)(torch.randn(3, 4)),
    "BatchNorm2d, 3-d input": lambda lib: lib.nn.BatchNorm2d(3)(X3),
    "BatchNorm1d, 4-d input": lambda lib: lib.nn.BatchNorm1d(3)(torch.randn(2, 3, 4, 5)),
    "BatchNorm3d, eps 0": lambda lib: lib.nn.BatchNorm3d(3, eps=0.0)(torch.randn(2, 3, 2, 2, 2)),
    "SyncBatchNorm, 1-d input": lambda lib: lib.nn.SyncBatchNorm(3)(torch.randn(3)),
    "SyncBatchNorm, no channels": lambda lib: lib.nn.SyncBatchNorm(0)(torch.randn(2, 0, 3)),
    "LazyBatchNorm2d, 3-d input": lambda lib: lib.nn.LazyBatchNorm2d()(X3),
    "GroupNorm, channels not divisible": lambda lib: lib.nn.GroupNorm(4, 6),
    "vmap of a training BatchNorm2d with unbatched running stats": lambda lib: torch.func.vmap(
        lib.nn.BatchNorm2d(3))(BATCHES),
    "vmap of a training BatchNorm2d without running stats": lambda lib: torch.func.vmap(
        lib.nn.BatchNorm2d(3, track_running_stats=False))(BATCHES),
}


def _outcome(call, lib):
    """``("ok", result)`` or ``("error", type, message)``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ("ok", call(lib))
    except Exception as error:  # noqa: BLE001 - the very point is to compare any error
        return ("error", type(error), str(error))


@pytest.mark.parametrize("name", CALLS)
def test_same_outcome_as_torch(name):
    theirs, ours = _outcome(CALLS[name], TORCH), _outcome(CALLS[name], BNLIB)
    if theirs[0] == "error":
        assert ours == theirs
        return
    assert ours[0] == "ok", ours
    if isinstance(theirs[1], torch.Tensor):
        assert ours[1].dtype == theirs[1].dtype
        assert_close(ours[1], theirs[1], equal_nan=True)


def test_instance_norm_warns_when_an_unused_channel_count_differs():
    module = bt.InstanceNorm1d(3)
    with pytest.warns(UserWarning, match=re.escape("input's size at dim=1 does not match")):
        module(torch.randn(2, 4, 5))


# Deliberate differences, each with its reason.


def test_batch_norm_of_non_empty_input_below_two_dims_names_the_rank():
    """torch raises ``IndexError: Dimension out of range`` (training) or a channel-count
    error that names 0 channels (eval); neither says what is wrong."""
    message = "batch_norm expected input with at least 2 dimensions (got 1D input)"
    with pytest.raises(ValueError, match=re.escape(message)):
        bt.batch_norm(torch.randn(5), None, None, training=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        bt.batch_norm(torch.randn(5), torch.zeros(5), torch.ones(5))


def test_int_normalized_shape_is_accepted_by_the_functional_forms():
    """torch's functional forms raise TypeError for an int; its modules convert it."""
    with pytest.raises(TypeError):
        nn.functional.rms_norm(X, 3)
    assert_close(bt.rms_norm(X, 3), nn.functional.rms_norm(X, (3,)))
    assert_close(bt.layer_norm(X, 3), nn.functional.layer_norm(X, (3,)))


def test_backend_argument_checks_name_the_argument():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=re.escape("grad_output shape (4, 2) differs")):
        validation.check_kernel_grad_output(torch.randn(4, 2), x)
    with pytest.raises(ValueError, match=re.escape("mean must have shape (3,), got (2,)")):
        validation.check_kernel_vector("mean", torch.zeros(2), 3, x)
    with pytest.raises(TypeError, match="expected a float16, bfloat16, float32 or float64"):
        validation.check_kernel_dtype(x.to(torch.float8_e4m3fn))
