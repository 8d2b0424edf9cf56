"""Drivers: call a student's functions on one case and return plain NumPy arrays.

This file is the untrusted side of grading. It imports only the standard library, NumPy and
(lazily, for the PyTorch assignment) torch, never bnlib, so it can be copied into a sandbox
where bnlib is not importable.

    driver(functions, case) -> result

``functions`` maps the graded names ("batchnorm_forward", ...) to the student's objects,
``case`` maps str to np.ndarray | int | float | bool | str (0-d arrays are accepted for
scalars, as a case read back from an .npz file holds them). A case says how to call the graded
function with its ``signature``, e.g. ``"batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out,
cache)"``: each parameter is the case entry of that name, those with a default are passed by
keyword. The result maps str to np.ndarray only: numbers, or fixed-width unicode strings for
descriptions, so it can be saved with ``np.savez`` and loaded with ``allow_pickle=False``. Keys::

    <name>            an output, converted with np.array(..., copy=True)
    <name>.type       what the student returned, e.g. "numpy.ndarray", "list", "torch.Tensor"
    returned          the shape of the return value, e.g. "tuple of 2"
    input.<name>      an input array as it was after the student's code ran: the trusted side
                      compares it with its own copy to tell whether the code modified it
    error             "<function> raised <ExceptionType>: <message>" when student code raised

The module driver adds ``grad_fn`` (the autograd node of the training output) and the state
of the module at construction (``init.<name>``) and after eval-mode calls (``eval.<name>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

MAX_MESSAGE_CHARS = 400
SIGNATURE = re.compile(r"(\w+)\((.*)\)\s*->\s*\(?([\w, ]*)\)?")


def parse_signature(signature: str) -> tuple[str, tuple[str, ...], tuple[str, ...],
                                             tuple[str, ...]]:
    """(name, positional parameters, keyword parameters, returned names) of a signature.

    >>> parse_signature("f(x, gamma, eps=1e-5) -> (out, cache)")
    ('f', ('x', 'gamma'), ('eps',), ('out', 'cache'))
    """
    match = SIGNATURE.fullmatch(signature.strip())
    if match is None:
        raise ValueError(f"not a signature 'name(params) -> returns': {signature!r}")
    name, params, returns = match.groups()
    params = [p.strip() for p in params.split(",") if p.strip()]
    positional = tuple(p for p in params if "=" not in p)
    keywords = tuple(p.split("=")[0].strip() for p in params if "=" in p)
    return name, positional, keywords, tuple(r.strip() for r in returns.split(",") if r.strip())


def _text(value: str) -> np.ndarray:
    return np.array(str(value)[:MAX_MESSAGE_CHARS])


def _argument(value):
    """A fresh copy of an array argument; a 0-d array (read back from .npz) as a Python scalar."""
    array = np.asarray(value)
    if array.dtype.kind in "biufU" and array.ndim == 0:
        return array.item()
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else value


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
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()  # a tensor: the judge decides if one was expected
    try:
        array = np.array(value, copy=True)
    except Exception:  # noqa: BLE001 - any object may come back; describe it, do not fail
        return
    if array.dtype.kind in "biuf":
        result[name] = array


def _guarded(function: str, thunk: Callable):
    """(value, None) when ``thunk()`` returns, (None, a result saying what it raised) if not."""
    try:
        return thunk(), None
    except (Exception, SystemExit) as error:
        return None, {"error": _text(f"{function} raised {type(error).__name__}: {error}")}


def _record_returned(result: dict, value, names: tuple[str, ...], prefix: str = "") -> bool:
    """Record a return value: a tuple element-wise when ``names`` has several entries.

    False when a tuple was expected and ``value`` is not a tuple/list of len(names).
    """
    if len(names) == 1:
        result[f"{prefix}returned"] = _text(_type_name(value))
        _record(result, names[0], value)
        return True
    if not isinstance(value, (tuple, list)):
        result[f"{prefix}returned"] = _text(_type_name(value))
        return False
    result[f"{prefix}returned"] = _text(f"{type(value).__name__} of {len(value)}")
    if len(value) != len(names):
        return False
    for name, item in zip(names, value, strict=True):
        if name != "cache":  # the cache is the student's own business
            _record(result, name, item)
    return True


def _invoke(functions: dict, case: dict, signature: str, prefix: str = "", given=None):
    """Call the function of ``signature`` on the case's entries ``<prefix><parameter>``.

    ``given`` supplies parameters that are not case entries (a cache). Returns (value, passed):
    the return value and the case arguments as the function received them.
    """
    name, positional, keywords, _ = parse_signature(signature)
    given = given or {}
    passed = {p: _argument(case[prefix + p]) for p in (*positional, *keywords)
              if p not in given and prefix + p in case}
    arguments = {**passed, **given}
    value = functions[name](*(arguments[p] for p in positional),
                            **{k: arguments[k] for k in keywords if k in arguments})
    return value, passed


def _record_inputs(result: dict, passed: dict) -> None:
    """Send back every array argument as the student's code left it (see ``input.<name>``)."""
    for name, value in passed.items():
        if isinstance(value, np.ndarray):
            result[f"input.{name}"] = np.array(value, copy=True)


def call(functions: dict, case: dict) -> dict:
    """The graded function of ``case["signature"]`` on the case's inputs."""
    signature = str(_argument(case["signature"]))
    name, _, _, returns = parse_signature(signature)
    called, failed = _guarded(name, lambda: _invoke(functions, case, signature))
    if failed:
        return failed
    (returned, passed), result = called, {}
    _record_inputs(result, passed)
    _record_returned(result, returned, returns)
    return result


def forward_then_backward(functions: dict, case: dict) -> dict:
    """forward on the case's inputs, forward again on its ``other.`` inputs, then backward on
    ``dout`` and the FIRST cache: a backward that ignores its cache cannot pass."""
    forward, backward = str(_argument(case["forward_signature"])), str(_argument(case["signature"]))
    forward_name, backward_name = parse_signature(forward)[0], parse_signature(backward)[0]
    called, failed = _guarded(forward_name, lambda: _invoke(functions, case, forward))
    if failed:
        return failed
    (returned, passed), result = called, {}
    if not _record_returned(result, returned, parse_signature(forward)[3], "forward."):
        return result
    _, failed = _guarded(forward_name, lambda: _invoke(functions, case, forward, "other."))
    if failed:
        return failed
    called, failed = _guarded(backward_name, lambda: _invoke(
        functions, case, backward, given={"cache": returned[1]}))
    if failed:
        return failed
    grads, passed_back = called
    _record_inputs(result, {**passed, **passed_back})
    _record_returned(result, grads, parse_signature(backward)[3])
    return result


def _tensor(case: dict, name: str, requires_grad: bool = False):
    import torch

    return torch.tensor(np.asarray(case[name]), requires_grad=requires_grad)


def torch_function(functions: dict, case: dict) -> dict:
    """BatchNormFunction.apply(x, weight, bias, eps); out, then gradients of sum(out * dout)."""
    import torch

    name = "BatchNormFunction"
    x, weight, bias = (_tensor(case, key, True) for key in ("x", "gamma", "beta"))
    out, failed = _guarded(f"{name}.apply", lambda: functions[name].apply(
        x, weight, bias, _argument(case["eps"])))
    if failed:
        return failed
    result = {"input.x": x.detach().numpy().copy()}
    _record(result, "out", out)
    if "out" not in result or not isinstance(out, torch.Tensor):
        return result
    _, failed = _guarded(f"{name}.backward",
                         lambda: (out * _tensor(case, "dout")).sum().backward())
    if failed:
        return failed
    for grad_name, tensor in (("dx", x), ("dgamma", weight), ("dbeta", bias)):
        if tensor.grad is not None:
            _record(result, grad_name, tensor.grad)
    return result


MODULE_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
MODULE_OPTIONS = ("eps", "momentum", "affine", "track_running_stats")


def _record_state(result: dict, module, prefix: str) -> None:
    """The module's parameters and buffers that are tensors, as arrays under ``prefix``."""
    for name in MODULE_STATE:
        value = getattr(module, name, None)
        if value is not None:
            _record(result, prefix + name, value)


def torch_module(functions: dict, case: dict) -> dict:
    """``BatchNorm2d(C, **options)``: its state at construction, a training step with a backward,
    more training steps, its running statistics, then eval-mode output and state."""
    result: dict = {}
    _, failed = _guarded("BatchNorm2d", lambda: _train_and_evaluate(
        functions["BatchNorm2d"], case, result))
    return failed or result


def _train_and_evaluate(module_class, case: dict, result: dict) -> None:
    import torch

    batches = np.asarray(case["batches"])  # (steps, N, C, H, W)
    options = {key: _argument(case[key]) for key in MODULE_OPTIONS if key in case}
    module = module_class(int(batches.shape[2]), **options)
    result["state_dict_keys"] = _text(",".join(module.state_dict().keys()))
    _record_state(result, module, "init.")
    if getattr(module, "weight", None) is not None:
        with torch.no_grad():
            module.weight.copy_(_tensor(case, "gamma"))
            module.bias.copy_(_tensor(case, "beta"))
    module.train()
    x = torch.tensor(batches[0], requires_grad=True)
    out_train = module(x)
    _record(result, "out_train", out_train)
    result["grad_fn"] = _text(type(getattr(out_train, "grad_fn", None)).__name__)
    (out_train * _tensor(case, "dout")).sum().backward()
    if x.grad is not None:
        _record(result, "dx", x.grad)
    for batch in batches[1:]:
        module(torch.tensor(batch))
    _record_state(result, module, "")
    module.eval()
    x_eval = _tensor(case, "x_eval")
    _record(result, "out_eval", module(x_eval))
    result["input.x_eval"] = x_eval.numpy().copy()
    _record_state(result, module, "eval.")


DRIVERS: dict[str, Callable[[dict, dict], dict]] = {
    "call": call,
    "forward_then_backward": forward_then_backward,
    "torch_function": torch_function,
    "torch_module": torch_module,
}
