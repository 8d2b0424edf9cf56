"""bnlib.torch goes wherever torch.nn's normalization layers go: isinstance checks, torch's
converters, torch.fx, torch.compile, torch.export, torch.jit.trace and torch.func.

The model zoo check builds the same small ResNet from bnlib's layers and from torch's and
requires every tool to give torch's results.
"""

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import bnlib.torch as bt

D = torch.float64

MODULES = [getattr(bt, name) for name in bt.__all__ if isinstance(getattr(bt, name), type)]
FAMILIES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
            nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@pytest.mark.parametrize("cls", MODULES, ids=lambda cls: cls.__name__)
def test_every_module_is_an_instance_of_torchs_classes(cls):
    """bnlib.torch.X subclasses torch.nn.X, hence its family's base class."""
    assert issubclass(cls, getattr(nn, cls.__name__))
    assert issubclass(cls, FAMILIES)


@pytest.mark.parametrize(
    ("lazy", "shape"),
    [(bt.LazyBatchNorm2d, (2, 5, 3, 3)), (bt.LazyInstanceNorm1d, (2, 5, 4)),
     (bt.LazyBatchNorm1d, (6, 5))],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_lazy_modules_become_bnlib_modules_and_match_torch(lazy, shape):
    ours, theirs = lazy(affine=True), getattr(nn, lazy.__name__)(affine=True)
    x = torch.randn(shape) * 2 + 1
    assert_close(ours(x), theirs(x))
    assert type(ours) is lazy.cls_to_become and ours.num_features == 5
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[key], value, msg=key)


@pytest.mark.parametrize("cls", [bt.InstanceNorm1d, bt.InstanceNorm2d, bt.InstanceNorm3d])
@pytest.mark.parametrize("track_running_stats", [False, True])
def test_instance_norm_modules_match_torch_in_train_and_eval(cls, track_running_stats):
    spatial = {bt.InstanceNorm1d: (7,), bt.InstanceNorm2d: (3, 4), bt.InstanceNorm3d: (2, 3, 2)}
    kwargs = dict(affine=True, track_running_stats=track_running_stats, momentum=0.3, dtype=D)
    ours, theirs = cls(4, **kwargs), getattr(nn, cls.__name__)(4, **kwargs)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    for training, shape in [(True, (3, 4)), (True, (4,)), (False, (2, 4)), (False, (4,))]:
        x = (torch.randn(*shape, *spatial[cls], dtype=D) * 3 + 2).requires_grad_()
        x_theirs = x.detach().clone().requires_grad_()
        y, y_theirs = ours.train(training)(x), theirs.train(training)(x_theirs)
        assert_close(y, y_theirs)
        y.sum().backward()
        y_theirs.sum().backward()
        assert_close(x.grad, x_theirs.grad, atol=1e-10, rtol=1e-9)
        for name, buffer in theirs.named_buffers():
            assert_close(getattr(ours, name), buffer, msg=name)
    assert_close(ours.weight.grad, theirs.weight.grad)


def test_torchs_convert_sync_batchnorm_converts_bnlib_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bt.BatchNorm2d(4), nn.Sequential(bt.BatchNorm1d(4)))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(converted[1]) is nn.SyncBatchNorm and type(converted[2][0]) is nn.SyncBatchNorm
    assert converted[1].weight is model[1].weight


def test_weight_decay_exclusion_by_isinstance_finds_bnlib_layers():
    """The usual recipe: no weight decay on the parameters of normalization layers."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    model = nn.Sequential(nn.Linear(4, 4), bt.BatchNorm1d(4), bt.LayerNorm(4), bt.GroupNorm(2, 4))
    excluded = [p for m in model.modules() if isinstance(m, norm_types) for p in m.parameters()]
    assert len(excluded) == 6


def test_torchscript_cannot_script_but_can_trace():
    """Documented limitation: torch.jit.script cannot compile a custom autograd.Function."""
    with pytest.raises(Exception):  # noqa: B017 - TorchScript's frontend error types vary
        torch.jit.script(bt.BatchNorm2d(3))
    module = bt.BatchNorm2d(3).eval()
    x = torch.randn(2, 3, 4, 4)
    with pytest.warns(torch.jit.TracerWarning):  # the shape checks hold for this shape only
        traced = torch.jit.trace(module, (x,))
    assert_close(traced(x * 2), nn.BatchNorm2d(3).eval()(x * 2))


# The model zoo check: a small ResNet, built from bnlib's layers and from torch's.


class Block(nn.Module):
    def __init__(self, lib, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = lib.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = lib.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet(lib, momentum=0.1) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), lib.BatchNorm2d(8, momentum=momentum),
        nn.ReLU(), Block(lib, 8), Block(lib, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )
    return model.to(D)


@pytest.fixture
def twins():
    """(bnlib ResNet, torch ResNet) with the same random parameters and running statistics."""
    torch.manual_seed(0)
    theirs = resnet(nn)
    with torch.no_grad():
        for module in theirs.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2)
    ours = resnet(bt)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


INPUT = torch.randn(4, 3, 6, 6, dtype=D, generator=torch.Generator().manual_seed(1))


def _step(model, x=INPUT):
    """Output, parameter gradients and buffers (by name) after one training step."""
    model.zero_grad()
    output = model(x)
    output.square().sum().backward()
    plain = lambda name: name.removeprefix("_orig_mod.")  # noqa: E731 - torch.compile's prefix
    grads = {plain(name): p.grad for name, p in model.named_parameters()}
    return output.detach(), grads, {plain(name): b.clone() for name, b in model.named_buffers()}


def test_zoo_convert_sync_batchnorm(twins):
    ours, theirs = twins
    for convert in (nn.SyncBatchNorm.convert_sync_batchnorm,
                    bt.SyncBatchNorm.convert_sync_batchnorm):
        converted = convert(copy.deepcopy(ours))
        layers = [m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)]
        assert len(layers) == 5
        assert_close(_step(converted), _step(copy.deepcopy(theirs)))


def test_zoo_fx_symbolic_trace(twins):
    ours, theirs = twins
    for momentum in (0.1, None):
        ours_m, theirs_m = copy.deepcopy(ours), copy.deepcopy(theirs)
        for module in (*ours_m.modules(), *theirs_m.modules()):
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = momentum
        traced = torch.fx.symbolic_trace(ours_m)
        assert any("batch_norm" in str(node.target) for node in traced.graph.nodes)
        for _ in range(2):  # the graph counts batches and updates the running statistics
            assert_close(_step(traced), _step(theirs_m))
        # The mode is read while tracing (bnlib's layers are traced through, not leaves).
        traced_for_eval = torch.fx.symbolic_trace(ours_m.eval())
        assert_close(traced_for_eval(INPUT), theirs_m.eval()(INPUT))


def test_zoo_fx_traced_graph_still_checks_its_input(twins):
    traced = torch.fx.symbolic_trace(bt.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        traced(torch.randn(2, 3, 4))


def test_zoo_torch_compile_fullgraph(twins):
    """aot_eager traces forward and backward through AOTAutograd, as inductor does, without
    the C++ code generation that would take minutes on a CPU."""
    ours, theirs = twins
    compiled = torch.compile(copy.deepcopy(ours), fullgraph=True, backend="aot_eager")
    reference = copy.deepcopy(theirs)
    for _ in range(2):
        assert_close(_step(compiled), _step(reference))


def test_torch_compile_fullgraph_with_a_cumulative_average():
    """momentum=None reads the batch counter as a number; the graph still has no break."""
    ours = torch.compile(bt.BatchNorm2d(3, momentum=None), fullgraph=True, backend="aot_eager")
    theirs = nn.BatchNorm2d(3, momentum=None)
    for step in range(2):
        x = torch.randn(4, 3, 2, 2) * (step + 1)
        assert_close(ours(x), theirs(x))
    assert_close(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked.item() == 2


def test_zoo_torch_export(twins):
    ours, theirs = twins
    for training in (False, True):
        exported = torch.export.export(copy.deepcopy(ours).train(training), (INPUT,))
        reference = copy.deepcopy(theirs).train(training)
        assert_close(exported.module()(INPUT), reference(INPUT))


def test_zoo_torch_func(twins):
    """functional_call + grad over the parameters, and per-sample outputs with vmap."""
    ours, theirs = twins
    results = []
    for model in (copy.deepcopy(ours).eval(), copy.deepcopy(theirs).eval()):
        params = dict(model.named_parameters())

        def loss(params, x, model=model):
            return torch.func.functional_call(model, params, (x,)).square().sum()

        grads = torch.func.grad(loss)(params, INPUT)
        per_sample = torch.func.vmap(
            lambda x, model=model: model(x.unsqueeze(0)).squeeze(0))(INPUT)
        jacobian = torch.func.jacrev(lambda x, model=model: model(x))(INPUT[:2])
        results.append((grads, per_sample, jacobian))
    assert_close(results[0], results[1])


def test_zoo_torch_func_in_training_mode(twins):
    """Batch statistics under grad: the loss is differentiated through them, and the buffers
    (passed in, as torch.func requires of any tensor updated in place) are updated."""
    ours, theirs = twins
    results = []
    for model in (copy.deepcopy(ours), copy.deepcopy(theirs)):
        params = dict(model.named_parameters())
        buffers = {k: v.clone() for k, v in model.named_buffers()}

        def loss(params, buffers, model=model):
            output = torch.func.functional_call(model, (params, buffers), (INPUT,))
            return output.square().sum()

        results.append((torch.func.grad(loss)(params, buffers), buffers))
    assert_close(results[0], results[1])
