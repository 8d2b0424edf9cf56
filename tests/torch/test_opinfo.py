"""bnlib.torch through the sample and error inputs that torch ships for its own ops and modules.

``torch.testing._internal`` describes each torch op (``op_db``: OpInfo) and module
(``module_db``: ModuleInfo) with sample inputs, error inputs and what it supports. For every op
and module bnlib provides, this runs bnlib's version on the same samples as torch's and
compares outputs, updated running statistics, gradients, memory formats and errors; float64
samples also go through gradcheck (with forward-mode AD and batched gradients) and
gradgradcheck (forward over reverse, in gradcheck's fast mode, which checks a random projection
of the Jacobian: the full second-order check of every sample would take minutes).

Deliberate difference: float32 results are compared with a tolerance of 1e-4, not bit for bit:
bnlib's statistics are two-pass around a pivot, more accurate than torch's float32 kernels (each
op's float64 samples are compared at 1e-10).
"""

import pytest
import torch
from torch.testing import assert_close
from torch.testing._internal.common_methods_invocations import SampleInput, op_db
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.utils._pytree import tree_map

import bnlib.torch as bt

CPU = torch.device("cpu")
TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10),
              torch.complex128: dict(rtol=1e-10, atol=1e-10),
              torch.float32: dict(rtol=1e-4, atol=1e-4),
              torch.complex64: dict(rtol=1e-4, atol=1e-4)}

BNLIB_OPS = {
    "nn.functional.batch_norm": bt.batch_norm,
    "nn.functional.instance_norm": bt.instance_norm,
    "nn.functional.layer_norm": bt.layer_norm,
    "nn.functional.group_norm": bt.group_norm,
    "nn.functional.rms_norm": bt.rms_norm,
}
# The "without_cudnn" variant of batch_norm has the same samples on a CPU.
OPS = [op for op in op_db if op.name in BNLIB_OPS and op.variant_test_name == ""]
MODULES = [info for info in module_db if hasattr(bt, info.module_cls.__name__)]


def _clone(value):
    """A deep copy of a sample's tensors (running statistics are updated in place)."""
    return tree_map(lambda t: t.detach().clone().requires_grad_(t.requires_grad)
                    if isinstance(t, torch.Tensor) else t, value)


def _dtypes(op):
    return [d for d in TOLERANCES if d in op.dtypes]


def _op_cases():
    for op in OPS:
        for dtype in _dtypes(op):
            yield pytest.param(op, dtype, id=f"{op.name}-{str(dtype).removeprefix('torch.')}")


def _run(function, sample):
    """Output and (cloned) arguments after the call: they hold updated running statistics."""
    sample = SampleInput(_clone(sample.input), args=_clone(sample.args),
                         kwargs=_clone(sample.kwargs))
    output = function(sample.input, *sample.args, **sample.kwargs)
    return output, sample


def _differentiable(sample):
    return [t for t in (sample.input, *sample.args, *sample.kwargs.values())
            if isinstance(t, torch.Tensor) and t.requires_grad]


@pytest.mark.parametrize(("op", "dtype"), list(_op_cases()))
def test_op_samples_match_torch(op, dtype):
    bnlib_op = BNLIB_OPS[op.name]
    samples = list(op.sample_inputs(CPU, dtype, requires_grad=True))
    assert samples
    for index, sample in enumerate(samples):
        theirs, their_sample = _run(op.op, sample)
        ours, our_sample = _run(bnlib_op, sample)
        message = f"sample {index}: {sample.summary()}"
        assert ours.dtype == theirs.dtype, message
        assert_close(ours, theirs, **TOLERANCES[dtype], msg=message)
        assert_close(our_sample.args, their_sample.args, **TOLERANCES[dtype], msg=message)
        inputs = _differentiable(our_sample)
        if not inputs or ours.numel() == 0:
            continue
        upstream = torch.randn_like(theirs)
        our_grads = torch.autograd.grad(ours, inputs, upstream)
        their_grads = torch.autograd.grad(theirs, _differentiable(their_sample), upstream)
        assert_close(our_grads, their_grads, **TOLERANCES[dtype], msg=message)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_op_gradcheck_on_float64_samples(op):
    """Reverse and forward mode, batched gradients, and second order (forward over reverse)."""
    bnlib_op = BNLIB_OPS[op.name]
    for sample in op.sample_inputs(CPU, torch.float64, requires_grad=True):
        inputs = _differentiable(sample)
        if not inputs or sample.input.numel() == 0:
            continue

        def function(*tensors, sample=sample):
            """The op of the differentiable tensors; the others (running statistics) are
            copied at each call, as the op updates them."""
            replace = dict(zip(map(id, _differentiable(sample)), tensors, strict=True))
            swap = lambda t: replace.get(id(t), _clone(t))  # noqa: E731
            args = [swap(a) for a in sample.args]
            kwargs = {k: swap(v) for k, v in sample.kwargs.items()}
            return bnlib_op(swap(sample.input), *args, **kwargs)

        assert torch.autograd.gradcheck(function, inputs, check_forward_ad=True,
                                        check_batched_grad=True,
                                        check_batched_forward_grad=True)
        assert torch.autograd.gradgradcheck(function, inputs, check_fwd_over_rev=True,
                                            fast_mode=True)


@pytest.mark.parametrize("op", [op for op in OPS if op.error_inputs_func], ids=lambda op: op.name)
def test_op_error_inputs_raise_torchs_errors(op):
    errors = list(op.error_inputs(CPU))
    assert errors
    for error in errors:
        sample = error.sample_input
        with pytest.raises(error.error_type, match=error.error_regex):
            BNLIB_OPS[op.name](sample.input, *sample.args, **sample.kwargs)


@pytest.mark.parametrize(("op", "dtype"), list(_op_cases()))
def test_op_memory_format_matches_torch(op, dtype):
    """Output and input-gradient layout of channels_last inputs, as torch lays them out."""
    for sample in op.sample_inputs(CPU, dtype, requires_grad=True):
        if sample.input.dim() != 4 or sample.input.numel() == 0:
            continue
        sample.input = (sample.input.detach().to(memory_format=torch.channels_last)
                        .requires_grad_())
        layouts = []
        for function in (op.op, BNLIB_OPS[op.name]):
            output, ran = _run(function, sample)
            (grad,) = torch.autograd.grad(output, ran.input, torch.ones_like(output))
            layouts.append([t.is_contiguous(memory_format=torch.channels_last)
                            for t in (output, grad)])
        assert layouts[1] == layouts[0], sample.summary()


# Modules.


def _module_cases():
    for info in MODULES:
        for dtype in (torch.float32, torch.float64):
            for training in (True, False):
                mode = "train" if training else "eval"
                yield pytest.param(info, dtype, training,
                                   id=f"{info.module_cls.__name__}-{dtype}-{mode}")


def _twins(info, module_input, dtype):
    """(bnlib module, torch module) built from the same arguments, with the same state."""
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    theirs = info.module_cls(*args, **kwargs).to(dtype)
    ours = getattr(bt, info.module_cls.__name__)(*args, **kwargs).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _forward(module, forward_input, training):
    module.train(training)
    args = _clone(forward_input.args)
    return module(*args, **_clone(forward_input.kwargs)), args


@pytest.mark.parametrize(("info", "dtype", "training"), list(_module_cases()))
def test_module_samples_match_torch(info, dtype, training):
    tolerances = TOLERANCES[dtype]
    inputs = info.module_inputs_func(info, device=CPU, dtype=dtype, requires_grad=True,
                                     training=training)
    for module_input in inputs:
        if module_input.forward_input is None:
            continue
        ours, theirs = _twins(info, module_input, dtype)
        message = f"{info.module_cls.__name__} {module_input.desc}"
        for _ in range(2):  # a second step sees the updated running statistics
            our_output, our_args = _forward(ours, module_input.forward_input, training)
            their_output, their_args = _forward(theirs, module_input.forward_input, training)
            assert_close(our_output, their_output, **tolerances, msg=message)
            upstream = torch.randn_like(their_output)
            our_leaves = [*our_args, *ours.parameters()]
            their_leaves = [*their_args, *theirs.parameters()]
            assert_close(torch.autograd.grad(our_output, our_leaves, upstream, allow_unused=True),
                         torch.autograd.grad(their_output, their_leaves, upstream,
                                             allow_unused=True),
                         **tolerances, msg=message)
            assert_close(dict(ours.named_buffers()), dict(theirs.named_buffers()),
                         **tolerances, msg=message)


@pytest.mark.parametrize("info", MODULES, ids=lambda info: info.module_cls.__name__)
def test_module_gradcheck_in_float64(info):
    """gradcheck (with forward-mode AD) and gradgradcheck through input and parameters
    (torch.func.functional_call), in gradcheck's fast mode: the samples have hundreds of
    values, and the ops' own samples are checked in full above."""
    for module_input in info.module_inputs_func(info, device=CPU, dtype=torch.float64,
                                                requires_grad=True, training=True):
        if module_input.forward_input is None:
            continue
        ours, _ = _twins(info, module_input, torch.float64)
        x = module_input.forward_input.args[0]
        if x.numel() == 0:
            continue
        names = [name for name, _ in ours.named_parameters()]
        buffers = {name: b.clone() for name, b in ours.named_buffers()}

        def function(x, *params, ours=ours, names=names, buffers=buffers):
            state = {**dict(zip(names, params, strict=True)), **_clone(buffers)}
            return torch.func.functional_call(ours, state, (x,))

        leaves = (x.detach().requires_grad_(), *(p.detach().requires_grad_()
                                                 for p in ours.parameters()))
        assert torch.autograd.gradcheck(function, leaves, check_forward_ad=True, fast_mode=True)
        assert torch.autograd.gradgradcheck(function, leaves, fast_mode=True)


@pytest.mark.parametrize("info", [i for i in MODULES if i.module_error_inputs_func],
                         ids=lambda info: info.module_cls.__name__)
def test_module_error_inputs_raise_torchs_errors(info):
    errors = info.module_error_inputs_func(info, device=CPU, dtype=torch.float32,
                                           requires_grad=False, training=True)
    assert errors
    bnlib_cls = getattr(bt, info.module_cls.__name__)
    for error in errors:
        module_input = error.module_error_input
        constructor = module_input.constructor_input
        with pytest.raises(error.error_type, match=error.error_regex):
            module = bnlib_cls(*constructor.args, **constructor.kwargs)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR
            module(*module_input.forward_input.args, **module_input.forward_input.kwargs)


@pytest.mark.parametrize("info", MODULES, ids=lambda info: info.module_cls.__name__)
def test_module_memory_format_matches_torch(info):
    """Output and input-gradient layout for channels_last(_3d) inputs, as torch's."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for module_input in info.module_inputs_func(info, device=CPU, dtype=torch.float32,
                                                requires_grad=True, training=True):
        forward = module_input.forward_input
        if forward is None or forward.args[0].dim() not in formats:
            continue
        memory_format = formats[forward.args[0].dim()]
        x = forward.args[0].detach().to(memory_format=memory_format)
        layouts = []
        for module in _twins(info, module_input, torch.float32):
            leaf = x.clone().requires_grad_()
            output = module(leaf)
            output.backward(torch.ones_like(output))
            layouts.append([t.is_contiguous(memory_format=memory_format)
                            for t in (output, leaf.grad)])
        assert layouts[0] == layouts[1], module_input.desc
