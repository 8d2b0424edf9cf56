"""SyncBatchNorm across two gloo processes equals batch norm over the concatenated batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bnlib.torch as bt

WORLD = 2
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batches(shape, seed=0):
    """The same full batches in every process: each rank takes its half."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator, dtype=torch.float64) * (1 + i) + i,
             torch.randn(shape, generator=generator, dtype=torch.float64))
            for i in range(STEPS)]


def worker(rank, port, shape, momentum, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        layer = bt.SyncBatchNorm(shape[1], momentum=momentum, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 1.5, shape[1], dtype=torch.float64))
            layer.bias.copy_(torch.linspace(-1, 1, shape[1], dtype=torch.float64))
        half = shape[0] // WORLD
        outs, grads, wgrads, bgrads = [], [], [], []
        for x, dy in batches(shape):
            part = x[rank * half:(rank + 1) * half].clone().requires_grad_(True)
            out = layer(part)
            out.backward(dy[rank * half:(rank + 1) * half])
            outs.append(out.detach())
            grads.append(part.grad)
            wgrads.append(layer.weight.grad.clone())
            bgrads.append(layer.bias.grad.clone())
            layer.weight.grad = layer.bias.grad = None
        results[rank] = {
            "out": outs, "grad": grads, "wgrad": wgrads, "bgrad": bgrads,
            "running_mean": layer.running_mean.clone(), "running_var": layer.running_var.clone(),
            "num_batches_tracked": int(layer.num_batches_tracked),
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shape,momentum", [((8, 3, 4, 4), 0.1), ((6, 5), None), ((4, 2, 3), 1.0)])
def test_two_process_sync_equals_single_process_over_the_whole_batch(shape, momentum):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), shape, momentum, results), nprocs=WORLD, join=True)
    reference = {2: bt.BatchNorm1d, 3: bt.BatchNorm1d, 4: bt.BatchNorm2d}[len(shape)](
        shape[1], momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        reference.weight.copy_(torch.linspace(0.5, 1.5, shape[1], dtype=torch.float64))
        reference.bias.copy_(torch.linspace(-1, 1, shape[1], dtype=torch.float64))
    half = shape[0] // WORLD
    for step, (x, dy) in enumerate(batches(shape)):
        x = x.clone().requires_grad_(True)
        out = reference(x)
        out.backward(dy)
        for rank in range(WORLD):
            rows = slice(rank * half, (rank + 1) * half)
            torch.testing.assert_close(results[rank]["out"][step], out.detach()[rows])
            torch.testing.assert_close(results[rank]["grad"][step], x.grad[rows])
        # parameter gradients are local shares: their sum is the whole batch's gradient
        torch.testing.assert_close(results[0]["wgrad"][step] + results[1]["wgrad"][step],
                                   reference.weight.grad)
        torch.testing.assert_close(results[0]["bgrad"][step] + results[1]["bgrad"][step],
                                   reference.bias.grad)
        reference.weight.grad = reference.bias.grad = None
    for rank in range(WORLD):
        torch.testing.assert_close(results[rank]["running_mean"], reference.running_mean)
        torch.testing.assert_close(results[rank]["running_var"], reference.running_var)
        assert results[rank]["num_batches_tracked"] == STEPS


def test_without_a_process_group_it_is_plain_batch_norm():
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    sync = bt.SyncBatchNorm(3, dtype=torch.float64)
    plain = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)
    assert set(sync.state_dict()) == set(torch.nn.SyncBatchNorm(3).state_dict())
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        sync(torch.randn(3))


def test_convert_sync_batchnorm_replaces_every_batch_norm_and_keeps_state():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(bt.BatchNorm2d(4)), torch.nn.ReLU())
    model[1].running_mean.fill_(0.5)
    model.eval()
    converted = bt.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], bt.SyncBatchNorm)
    assert isinstance(converted[2][0], bt.SyncBatchNorm)
    assert not converted[1].training
    torch.testing.assert_close(converted[1].running_mean, torch.full((4,), 0.5))
    assert converted[1].weight is model[1].weight
