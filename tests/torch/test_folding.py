"""fold_conv_batchnorm: one convolution that computes conv -> BN of evaluation mode, the same as
torch's own fuse_conv_bn_eval, with clear errors where folding does not apply."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import bnlib.torch as bt

CONVOLUTIONS = {1: (nn.Conv1d, bt.BatchNorm1d), 2: (nn.Conv2d, bt.BatchNorm2d),
                3: (nn.Conv3d, bt.BatchNorm3d)}


def trained_pair(dims=2, *, bias=True, affine=True, groups=1, dtype=torch.float64, seed=0):
    """A conv -> BN pair in evaluation mode whose running statistics and affine parameters are
    far from their initial values (mean 1, std 3 inputs; gamma in [0.5, 2], beta ~ N(0, 1))."""
    generator = torch.Generator().manual_seed(seed)
    conv_class, bn_class = CONVOLUTIONS[dims]
    conv = conv_class(4, 6, kernel_size=3, padding=1, stride=2 if dims == 2 else 1, bias=bias,
                      groups=groups).to(dtype)
    bn = bn_class(6, affine=affine).to(dtype)
    spatial = (5,) * dims
    with torch.no_grad():
        for _ in range(5):
            bn(conv(1 + 3 * torch.randn(8, 4, *spatial, generator=generator, dtype=dtype)))
        if affine:
            bn.weight.copy_(0.5 + 1.5 * torch.rand(6, generator=generator, dtype=dtype))
            bn.bias.copy_(torch.randn(6, generator=generator, dtype=dtype))
    x = 1 + 3 * torch.randn(3, 4, *spatial, generator=generator, dtype=dtype)
    return conv.eval(), bn.eval(), x


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_folded_convolution_computes_conv_then_bn_in_float64(dims, bias, affine):
    conv, bn, x = trained_pair(dims, bias=bias, affine=affine)
    folded = bt.fold_conv_batchnorm(conv, bn)
    assert type(folded) is type(conv)
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_fuse_conv_bn_eval(groups, dtype):
    conv, bn, x = trained_pair(groups=groups, dtype=dtype)
    ours, torchs = bt.fold_conv_batchnorm(conv, bn), fuse_conv_bn_eval(conv, bn)
    # torch folds in the parameters' dtype, bnlib in float64 and rounds once at the end.
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(ours.weight, torchs.weight, **tolerance)
    torch.testing.assert_close(ours.bias, torchs.bias, **tolerance)
    torch.testing.assert_close(ours(x), torchs(x), **tolerance)
    assert ours.weight.dtype == ours.bias.dtype == dtype


def test_keeps_the_convolutions_settings_and_leaves_the_inputs_unchanged():
    conv, bn, _ = trained_pair()
    conv_state, bn_state = copy.deepcopy(conv.state_dict()), copy.deepcopy(bn.state_dict())
    folded = bt.fold_conv_batchnorm(conv, bn)
    assert (folded.stride, folded.padding, folded.groups) == (conv.stride, conv.padding, 1)
    assert folded.weight.requires_grad and folded.bias.requires_grad
    assert folded.weight is not conv.weight
    for module, state in ((conv, conv_state), (bn, bn_state)):
        for name, value in module.state_dict().items():
            assert torch.equal(value, state[name]), name


def test_a_folded_bias_is_added_to_a_convolution_without_one():
    conv, bn, _ = trained_pair(bias=False)
    folded = bt.fold_conv_batchnorm(conv, bn)
    assert conv.bias is None and folded.bias is not None
    assert "bias" in dict(folded.named_parameters())


def test_refuses_what_cannot_be_folded():
    conv, bn, _ = trained_pair()
    with pytest.raises(ValueError, match=r"bn is in training mode.*call bn.eval\(\)"):
        bt.fold_conv_batchnorm(conv, copy.deepcopy(bn).train())
    stateless = bt.BatchNorm2d(6, track_running_stats=False).eval()
    with pytest.raises(ValueError, match=r"no running statistics \(track_running_stats=False\)"):
        bt.fold_conv_batchnorm(conv, stateless)
    with pytest.raises(ValueError, match="bn normalizes 5 channels but conv has 6 output"):
        bt.fold_conv_batchnorm(conv, bt.BatchNorm2d(5).eval())
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv1d, Conv2d or Conv3d, "
                                        "got ConvTranspose2d"):
        bt.fold_conv_batchnorm(nn.ConvTranspose2d(4, 6, 3), bn)
    with pytest.raises(TypeError, match="bn must be a batch norm module.*got GroupNorm"):
        bt.fold_conv_batchnorm(conv, bt.GroupNorm(2, 6))
