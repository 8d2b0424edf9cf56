"""The catalogue of common mistakes, each with the diagnosis the checks give.

Every entry names an assignment, describes the mistake, plants it into the solution notebook
(``plant``: (old, new) replacements applied to the notebook's code cells, each ``old``
occurring exactly once in the notebook) and lists the words the feedback must contain. The
exercise tests plant every entry, grade the notebook with ``nbgrader autograde`` and check
that points are lost and the feedback contains ``diagnosis``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mistake:
    id: str
    assignment: str
    description: str
    plant: tuple[tuple[str, str], ...]
    diagnosis: str  # words the feedback contains


def plant_into(sources: list[str], mistake: Mistake) -> list[str]:
    """Apply ``mistake.plant`` to a notebook's code cell sources; each ``old`` must occur once."""
    sources = list(sources)
    for old, new in mistake.plant:
        hits = [i for i, source in enumerate(sources) if old in source]
        if len(hits) != 1 or sources[hits[0]].count(old) != 1:
            raise ValueError(f"{mistake.id}: {old!r} must occur exactly once in the notebook, "
                             f"found it in {len(hits)} cells")
        sources[hits[0]] = sources[hits[0]].replace(old, new)
    return sources


MISTAKES: tuple[Mistake, ...] = (
    # --- bn_forward ---------------------------------------------------------------------------
    Mistake("bn_forward.wrong_axis", "bn_forward",
            "mean and variance over the features of each sample (axis 1) instead of the batch",
            (("x.mean(axis=0)", "x.mean(axis=1, keepdims=True)"),
             ("(xc ** 2).mean(axis=0)", "(xc ** 2).mean(axis=1, keepdims=True)")),
            "over axis 1"),
    Mistake("bn_forward.unbiased_variance", "bn_forward",
            "normalising with the unbiased variance (ddof=1)",
            (("var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).sum(axis=0) / (x.shape[0] - 1)"),),
            "unbiased variance (ddof=1)"),
    Mistake("bn_forward.eps_outside_sqrt", "bn_forward",
            "sqrt(var) + eps instead of sqrt(var + eps)",
            (("1.0 / np.sqrt(var + eps)", "1.0 / (np.sqrt(var) + eps)"),),
            "eps is outside the square root"),
    Mistake("bn_forward.gamma_beta_swapped", "bn_forward", "beta * xhat + gamma",
            (("out = gamma * xhat + beta", "out = beta * xhat + gamma"),),
            "gamma and beta are swapped"),
    Mistake("bn_forward.no_sqrt", "bn_forward", "dividing by the variance, not the std",
            (("1.0 / np.sqrt(var + eps)", "1.0 / (var + eps)"),),
            "divide by the standard deviation"),
    Mistake("bn_forward.inplace", "bn_forward", "subtracting the mean from x in place",
            (("xc = x - mean", "xc = x\n    xc -= mean"),),
            "modified its input x in place"),
    Mistake("bn_forward.one_pass_variance", "bn_forward",
            "variance as E[x^2] - E[x]^2, which cancels in float32 with a large mean",
            (("var = (xc ** 2).mean(axis=0)", "var = (x ** 2).mean(axis=0) - mean ** 2"),),
            "catastrophic cancellation"),
    Mistake("bn_forward.spatial_no_transpose", "bn_forward",
            "reshaping (N, C, H, W) to (-1, C) without moving C last",
            (("x.transpose(0, 2, 3, 1).reshape(-1, C)", "x.reshape(-1, C)"),
             ("out_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)",
              "out_rows.reshape(N, C, H, W)")),
            "without moving C last"),
    # --- bn_backward --------------------------------------------------------------------------
    Mistake("bn_backward.graph_missing_dvar", "bn_backward",
            "staged graph: the path through the variance is dropped",
            (("    dxmu += 2 * xmu * dvar / N\n", ""),),
            "flows through the variance"),
    Mistake("bn_backward.graph_missing_factor_2", "bn_backward",
            "staged graph: d var / d x without the factor 2",
            (("dxmu += 2 * xmu * dvar / N", "dxmu += xmu * dvar / N"),),
            "the factor 2 is missing"),
    Mistake("bn_backward.graph_missing_dmean", "bn_backward",
            "staged graph: the path through the mean is dropped",
            (("dx = dxmu + dmean / N", "dx = dxmu"),),
            "flows through the mean"),
    Mistake("bn_backward.dgamma_dbeta_swapped", "bn_backward", "dgamma and dbeta exchanged",
            (("    dbeta = dout.sum(axis=0)\n    dgamma = (dout * xhat).sum(axis=0)",
              "    dgamma = dout.sum(axis=0)\n    dbeta = (dout * xhat).sum(axis=0)"),),
            "dgamma and dbeta are swapped"),
    Mistake("bn_backward.alt_missing_xhat_term", "bn_backward",
            "closed form without the xhat * mean(dxhat * xhat) term",
            ((" - xhat * (dxhat * xhat).mean(axis=0)", ""),),
            "flows through the variance"),
    Mistake("bn_backward.alt_missing_mean_term", "bn_backward",
            "closed form without the mean(dxhat) term",
            (("dxhat - dxhat.mean(axis=0) - xhat", "dxhat - xhat"),),
            "flows through the mean"),
    Mistake("bn_backward.alt_dgamma_without_xhat", "bn_backward", "dgamma = sum(dout)",
            (("dgamma = np.sum(dout * xhat, axis=0)", "dgamma = np.sum(dout, axis=0)"),),
            "the factor xhat is missing"),
    # --- bn_inference -------------------------------------------------------------------------
    Mistake("bn_inference.running_var_biased", "bn_inference",
            "running variance without Bessel's correction",
            (("batch_var = x.var(axis=0) * n / (n - 1)", "batch_var = x.var(axis=0)"),),
            "Bessel's correction"),
    Mistake("bn_inference.keras_momentum", "bn_inference",
            "momentum weighting the old value (Keras' convention)",
            (("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
              "new_mean = momentum * running_mean + (1 - momentum) * batch_mean"),
             ("new_var = (1 - momentum) * running_var + momentum * batch_var",
              "new_var = momentum * running_var + (1 - momentum) * batch_var")),
            "Keras momentum convention"),
    Mistake("bn_inference.running_stats_inplace", "bn_inference",
            "updating running_mean in place",
            (("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
              "running_mean *= 1 - momentum\n    running_mean += momentum * batch_mean\n"
              "    new_mean = running_mean"),),
            "modified its input running_mean in place"),
    Mistake("bn_inference.batch_stats_in_inference", "bn_inference",
            "inference normalising with the statistics of the batch",
            (("    scale = gamma / np.sqrt(running_var + eps)\n",
              "    axes = (0, *range(2, x.ndim))\n"
              "    running_mean, running_var = x.mean(axis=axes), x.var(axis=axes)\n"
              "    scale = gamma / np.sqrt(running_var + eps)\n"),),
            "statistics of the batch"),
    Mistake("bn_inference.eps_outside_sqrt", "bn_inference", "sqrt(running_var) + eps",
            (("gamma / np.sqrt(running_var + eps)", "gamma / (np.sqrt(running_var) + eps)"),),
            "eps is outside the square root"),
    Mistake("bn_inference.fold_bias_without_b", "bn_inference",
            "folded bias that forgets the linear layer's bias",
            (("b_folded = (b - running_mean) * gamma / std + beta",
              "b_folded = beta - running_mean * gamma / std"),),
            "ignores the linear bias b"),
    Mistake("bn_inference.fold_rows", "bn_inference", "scaling the rows of W, not its columns",
            (("W_folded = W * (gamma / std)", "W_folded = W * (gamma / std)[:, None]"),),
            "scale the columns of W"),
    # --- layer_norm ---------------------------------------------------------------------------
    Mistake("layer_norm.batch_axis", "layer_norm", "layer norm over the batch axis (axis 0)",
            (("x.mean(axis=1, keepdims=True)", "x.mean(axis=0, keepdims=True)"),
             ("(xmu ** 2).mean(axis=1, keepdims=True)", "(xmu ** 2).mean(axis=0, keepdims=True)")),
            "over the batch axis"),
    Mistake("layer_norm.backward_batch_axis", "layer_norm",
            "layer norm backward with the mean terms over the batch",
            (("dxhat.mean(axis=1, keepdims=True)", "dxhat.mean(axis=0, keepdims=True)"),
             ("(dxhat * xhat).mean(axis=1, keepdims=True)",
              "(dxhat * xhat).mean(axis=0, keepdims=True)")),
            "the means in dx run over the batch"),
    Mistake("layer_norm.dgamma_wrong_axis", "layer_norm", "dgamma summed over the features",
            (("dgamma = (dout * xhat).sum(axis=0)", "dgamma = (dout * xhat).sum(axis=1)"),),
            "sum over the batch"),
    Mistake("layer_norm.groups_interleaved", "layer_norm",
            "group norm taking every G-th channel into a group",
            (("groups = x.reshape(N, num_groups, C // num_groups, H, W)",
              "groups = x.reshape(N, C // num_groups, num_groups, H, W)"),
             ("mean = groups.mean(axis=(2, 3, 4), keepdims=True)",
              "mean = groups.mean(axis=(1, 3, 4), keepdims=True)"),
             ("var = groups.var(axis=(2, 3, 4), keepdims=True)",
              "var = groups.var(axis=(1, 3, 4), keepdims=True)")),
            "every num_groups-th channel"),
    Mistake("layer_norm.groups_of_size_num_groups", "layer_norm",
            "group norm with groups of num_groups channels (count and size exchanged)",
            (("groups = x.reshape(N, num_groups, C // num_groups, H, W)",
              "groups = x.reshape(N, C // num_groups, num_groups, H, W)"),),
            "you made groups of num_groups channels"),
    # --- bn_torch -----------------------------------------------------------------------------
    Mistake("bn_torch.torch_var_unbiased", "bn_torch",
            "Tensor.var's default (unbiased) in the forward pass",
            (("x.var(dim=dims, unbiased=False, keepdim=True)", "x.var(dim=dims, keepdim=True)"),),
            "unbiased by default"),
    Mistake("bn_torch.backward_wrong_order", "bn_torch",
            "backward returning grad_bias and grad_weight in the wrong order",
            (("return grad_x, grad_weight, grad_bias, None",
              "return grad_x, grad_bias, grad_weight, None"),),
            "gradients in the wrong order"),
    Mistake("bn_torch.backward_missing_xhat_term", "bn_torch",
            "autograd.Function backward without the variance term",
            (("\n                            - xhat * (dxhat * xhat).mean(dim=dims, keepdim=True))",
              ")"),),
            "flows through the variance"),
    Mistake("bn_torch.eval_uses_batch_stats", "bn_torch",
            "BatchNorm2d normalising with batch statistics in eval mode",
            (("        if not self.training:\n", "        if False:  # eval mode not handled\n"),),
            "in eval mode"),
    Mistake("bn_torch.running_var_biased", "bn_torch",
            "BatchNorm2d updating running_var with the biased variance",
            (("batch_var = x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)",
              "batch_var = x.var(dim=(0, 2, 3), unbiased=False)"),),
            "Bessel's correction"),
    Mistake("bn_torch.keras_momentum", "bn_torch",
            "BatchNorm2d with momentum weighting the old value",
            (("self.running_mean.mul_(1 - self.momentum).add_(self.momentum * batch_mean)",
              "self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)"),
             ("self.running_var.mul_(1 - self.momentum).add_(self.momentum * batch_var)",
              "self.running_var.mul_(self.momentum).add_((1 - self.momentum) * batch_var)")),
            "Keras momentum convention"),
    Mistake("bn_torch.parameters_named_gamma_beta", "bn_torch",
            "parameters named gamma and beta, so the state_dict differs from torch.nn's",
            (("self.weight = nn.Parameter(torch.ones(num_features))",
              "self.gamma = nn.Parameter(torch.ones(num_features))"),
             ("self.bias = nn.Parameter(torch.zeros(num_features))",
              "self.beta = nn.Parameter(torch.zeros(num_features))")),
            "state_dict keys"),
)

CATALOGUE: dict[str, Mistake] = {m.id: m for m in MISTAKES}
