"""Drivers: call a student's functions on one case and return plain NumPy arrays.

This file is the untrusted side of grading. It imports only the standard library, NumPy and
(lazily, for the PyTorch assignment) torch, never bnlib, so it can be copied into a sandbox
where bnlib is not importable.

    driver(functions, case) -> result

``functions`` maps the graded names ("batchnorm_forward", ...) to the student's objects,
``case`` maps str to np.ndarray | int | float | str (0-d arrays are accepted for scalars, as a
case read back from an .npz file holds them). The result maps str to np.ndarray only: numbers,
or fixed-width unicode strings for descriptions, so it can be saved with ``np.savez`` and loaded
with ``allow_pickle=False``. Keys::

    <name>            an output, converted with np.array(..., copy=True)
    <name>.type       what the student returned, e.g. "numpy.ndarray", "list", "torch.Tensor"
    returned          the shape of the return value, e.g. "tuple of 2"
    grad_fn           (module driver) the autograd node of the training output, e.g.
                      "BatchNormFunctionBackward"
    mutated           comma-separated names of inputs the student's code modified ("" if none)
    error             "<function> raised <ExceptionType>: <message>" when student code raised
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MAX_MESSAGE_CHARS = 400


def _text(value: str) -> np.ndarray:
    return np.array(str(value)[:MAX_MESSAGE_CHARS])


def _scalar(case: dict, name: str, kind: type):
    return kind(np.asarray(case[name]).item())


def _type_name(value) -> str:
    """'numpy.ndarray', 'torch.Tensor', 'list', 'MyClass': as a user would write the type."""
    kind = type(value)
    package = kind.__module__.split(".")[0]
    if package in ("numpy", "torch"):
        return f"{package}.{kind.__name__}"
    return kind.__name__


def _record(result: dict, name: str, value) -> None:
    """Store ``value`` under ``name`` if it converts to a numeric array; always store its type."""
    result[f"{name}.type"] = _text(_type_name(value))
    if type(value).__module__.startswith("torch"):
        # Tensors are described by the torch driver; a tensor here is a wrong return type.
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
    try:
        array = np.array(value, copy=True)
    except Exception:  # noqa: BLE001 - any object may come back; describe it, do not fail
        return
    if array.dtype.kind in "biuf":
        result[name] = array


def _raised(result: dict, function: str, error: BaseException) -> dict:
    result["error"] = _text(f"{function} raised {type(error).__name__}: {error}")
    return result


def _copies(case: dict, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {name: np.array(case[name], copy=True) for name in names}


def _record_mutations(result: dict, originals: dict, passed: dict) -> None:
    mutated = [
        name
        for name, original in originals.items()
        if passed[name].shape != original.shape
        or not np.array_equal(passed[name], original, equal_nan=True)
    ]
    result["mutated"] = _text(",".join(mutated))


def _unpack(result: dict, value, names: tuple[str, ...]) -> bool:
    """Record a returned tuple element-wise; False if it is not a tuple/list of len(names)."""
    if isinstance(value, (tuple, list)):
        result["returned"] = _text(f"{type(value).__name__} of {len(value)}")
        if len(value) == len(names):
            for name, item in zip(names, value, strict=True):
                _record(result, name, item)
            return True
        return False
    result["returned"] = _text(_type_name(value))
    return False


def _call(function: Callable, *args, **kwargs):
    return function(*args, **kwargs)


def normalize_forward(functions: dict, case: dict) -> dict:
    """forward(x, gamma, beta[, num_groups], eps=eps) -> (out, cache); records out."""
    name = _scalar(case, "function", str)
    result: dict = {}
    originals = _copies(case, ("x", "gamma", "beta"))
    passed = _copies(case, ("x", "gamma", "beta"))
    args = [passed["x"], passed["gamma"], passed["beta"]]
    if "num_groups" in case:
        args.append(_scalar(case, "num_groups", int))
    try:
        returned = _call(functions[name], *args, eps=_scalar(case, "eps", float))
    except (Exception, SystemExit) as error:
        return _raised(result, name, error)
    _record_mutations(result, originals, passed)
    _unpack(result, returned, ("out", "cache"))
    result.pop("cache", None)  # the cache is the student's own business
    return result


def normalize_backward(functions: dict, case: dict) -> dict:
    """forward(x, gamma, beta, eps) -> (out, cache), then backward(dout, cache) -> grads."""
    forward_name = _scalar(case, "forward", str)
    backward_name = _scalar(case, "function", str)
    result: dict = {}
    originals = _copies(case, ("x", "gamma", "beta", "dout"))
    passed = _copies(case, ("x", "gamma", "beta", "dout"))
    try:
        returned = _call(
            functions[forward_name], passed["x"], passed["gamma"], passed["beta"],
            eps=_scalar(case, "eps", float),
        )
    except (Exception, SystemExit) as error:
        return _raised(result, forward_name, error)
    if not _unpack(result, returned, ("out", "cache")):
        result["returned"] = _text(f"{forward_name}: {result['returned']}")
        return result
    cache = returned[1]
    try:
        grads = _call(functions[backward_name], passed["dout"], cache)
    except (Exception, SystemExit) as error:
        return _raised(result, backward_name, error)
    _record_mutations(result, originals, passed)
    result.pop("cache", None)
    result.pop("returned", None)
    _unpack(result, grads, ("dx", "dgamma", "dbeta"))
    return result


def running_stats(functions: dict, case: dict) -> dict:
    """update_running_stats(running_mean, running_var, x, momentum) -> (mean, var)."""
    name = "update_running_stats"
    result: dict = {}
    names = ("running_mean", "running_var", "x")
    originals, passed = _copies(case, names), _copies(case, names)
    try:
        returned = _call(
            functions[name], passed["running_mean"], passed["running_var"], passed["x"],
            momentum=_scalar(case, "momentum", float),
        )
    except (Exception, SystemExit) as error:
        return _raised(result, name, error)
    _record_mutations(result, originals, passed)
    _unpack(result, returned, ("new_mean", "new_var"))
    return result


def inference(functions: dict, case: dict) -> dict:
    """batchnorm_inference(x, gamma, beta, running_mean, running_var, eps) -> out."""
    name = "batchnorm_inference"
    result: dict = {}
    names = ("x", "gamma", "beta", "running_mean", "running_var")
    originals, passed = _copies(case, names), _copies(case, names)
    try:
        returned = _call(
            functions[name], *(passed[n] for n in names), eps=_scalar(case, "eps", float)
        )
    except (Exception, SystemExit) as error:
        return _raised(result, name, error)
    _record_mutations(result, originals, passed)
    result["returned"] = _text(_type_name(returned))
    _record(result, "out", returned)
    return result


def fold(functions: dict, case: dict) -> dict:
    """fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps) -> (W_f, b_f)."""
    name = "fold_batchnorm"
    result: dict = {}
    names = ("W", "b", "gamma", "beta", "running_mean", "running_var")
    originals, passed = _copies(case, names), _copies(case, names)
    try:
        returned = _call(
            functions[name], *(passed[n] for n in names), eps=_scalar(case, "eps", float)
        )
    except (Exception, SystemExit) as error:
        return _raised(result, name, error)
    _record_mutations(result, originals, passed)
    _unpack(result, returned, ("W_folded", "b_folded"))
    return result


def _tensor_out(result: dict, name: str, value) -> None:
    """Record a tensor output as a NumPy array (detached), and what it was."""
    result[f"{name}.type"] = _text(_type_name(value))
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        result[name] = np.array(value.detach().cpu().numpy(), copy=True)
    else:
        _record(result, name, value)


def torch_function(functions: dict, case: dict) -> dict:
    """BatchNormFunction.apply(x, weight, bias, eps); out, then gradients of sum(out * dout)."""
    import torch

    name = "BatchNormFunction"
    result: dict = {}
    x = torch.tensor(case["x"], requires_grad=True)
    weight = torch.tensor(case["gamma"], requires_grad=True)
    bias = torch.tensor(case["beta"], requires_grad=True)
    x_before = x.detach().clone()
    try:
        out = _call(functions[name].apply, x, weight, bias, _scalar(case, "eps", float))
    except (Exception, SystemExit) as error:
        return _raised(result, f"{name}.apply", error)
    result["mutated"] = _text("" if torch.equal(x.detach(), x_before) else "x")
    _tensor_out(result, "out", out)
    if "out" not in result or not isinstance(out, torch.Tensor):
        return result
    try:
        (out * torch.tensor(case["dout"])).sum().backward()
    except (Exception, SystemExit) as error:
        return _raised(result, f"{name}.backward", error)
    for grad_name, tensor in (("dx", x), ("dgamma", weight), ("dbeta", bias)):
        if tensor.grad is not None:
            _tensor_out(result, grad_name, tensor.grad)
    return result


def torch_module(functions: dict, case: dict) -> dict:
    """BatchNorm2d(C, eps, momentum): names, training steps, running stats, eval output."""
    import torch

    name = "BatchNorm2d"
    result: dict = {}
    batches = case["batches"]  # (steps, N, C, H, W)
    try:
        module = _call(
            functions[name], int(batches.shape[2]), eps=_scalar(case, "eps", float),
            momentum=_scalar(case, "momentum", float),
        )
        result["state_dict_keys"] = _text(",".join(module.state_dict().keys()))
        result["parameter_names"] = _text(",".join(n for n, _ in module.named_parameters()))
        with torch.no_grad():
            module.weight.copy_(torch.tensor(case["gamma"]))
            module.bias.copy_(torch.tensor(case["beta"]))
        module.train()
        x = torch.tensor(batches[0], requires_grad=True)
        out_train = module(x)
        _tensor_out(result, "out_train", out_train)
        result["grad_fn"] = _text(type(getattr(out_train, "grad_fn", None)).__name__)
        (out_train * torch.tensor(case["dout"])).sum().backward()
        if x.grad is not None:
            _tensor_out(result, "dx", x.grad)
        for batch in batches[1:]:
            module(torch.tensor(batch))
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(module, buffer, None)
            if value is not None:
                _tensor_out(result, buffer, value)
        module.eval()
        x_eval = torch.tensor(case["x_eval"])
        _tensor_out(result, "out_eval", module(x_eval))
        result["mutated"] = _text(
            "" if np.array_equal(x_eval.numpy(), case["x_eval"]) else "x"
        )
    except (Exception, SystemExit) as error:
        return _raised(result, name, error)
    return result


DRIVERS: dict[str, Callable[[dict, dict], dict]] = {
    "normalize_forward": normalize_forward,
    "normalize_backward": normalize_backward,
    "running_stats": running_stats,
    "inference": inference,
    "fold": fold,
    "torch_function": torch_function,
    "torch_module": torch_module,
}
