"""The computational graph of batch normalization (training mode), as data and as a figure.

The forward pass ``y = gamma * (x - mu) / sqrt(var + eps) + beta`` is split into the
elementary nodes that a staged backward pass visits one by one (CS231n / kratzert style):

    x -> mu -> x-mu -> (x-mu)^2 -> var -> var+eps -> sqrt -> 1/sqrt -> xhat
      -> gamma*xhat -> +beta -> y

Each edge carries the local derivative of its head with respect to its tail; the chain rule
multiplies them along every path from ``y`` back to ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "COMPUTATION_NODES",
    "PARAMETER_NODES",
    "GraphEdge",
    "batchnorm_graph_edges",
    "topological_order",
    "draw_batchnorm_graph",
]

#: The twelve nodes of the forward pass, in the order the forward pass computes them.
COMPUTATION_NODES: tuple[str, ...] = (
    "x",
    "mu",
    "x-mu",
    "(x-mu)^2",
    "var",
    "var+eps",
    "sqrt",
    "1/sqrt",
    "xhat",
    "gamma*xhat",
    "+beta",
    "y",
)

#: The learned inputs of the graph (leaves, like ``x``).
PARAMETER_NODES: tuple[str, ...] = ("gamma", "beta")


@dataclass(frozen=True)
class GraphEdge:
    """One edge ``tail -> head`` with the local derivative d(head)/d(tail) as LaTeX."""

    tail: str
    head: str
    local_derivative: str


def batchnorm_graph_edges() -> tuple[GraphEdge, ...]:
    """Edges of the BN graph with their local derivatives.

    Per feature, over the M values that its statistics are taken over (M = N for an (N, D)
    input, N*H*W for (N, C, H, W)); mu and var are the batch mean and batch variance.

    Returns:
        tuple of GraphEdge; every node of COMPUTATION_NODES and PARAMETER_NODES appears.
    """
    return (
        GraphEdge("x", "mu", r"$\frac{1}{M}$"),
        GraphEdge("x", "x-mu", r"$1$"),
        GraphEdge("mu", "x-mu", r"$-1$"),
        GraphEdge("x-mu", "(x-mu)^2", r"$2(x-\mu_\mathcal{B})$"),
        GraphEdge("(x-mu)^2", "var", r"$\frac{1}{M}$"),
        GraphEdge("var", "var+eps", r"$1$"),
        GraphEdge("var+eps", "sqrt", r"$\frac{1}{2\sqrt{\cdot}}$"),
        GraphEdge("sqrt", "1/sqrt", r"$-\frac{1}{(\sqrt{\cdot})^2}$"),
        GraphEdge("x-mu", "xhat", r"$\frac{1}{\sqrt{\sigma^2_\mathcal{B}+\epsilon}}$"),
        GraphEdge("1/sqrt", "xhat", r"$x-\mu_\mathcal{B}$"),
        GraphEdge("xhat", "gamma*xhat", r"$\gamma$"),
        GraphEdge("gamma", "gamma*xhat", r"$\hat{x}$"),
        GraphEdge("gamma*xhat", "+beta", r"$1$"),
        GraphEdge("beta", "+beta", r"$1$"),
        GraphEdge("+beta", "y", r"$1$"),
    )


def topological_order(edges: tuple[GraphEdge, ...] | None = None) -> list[str]:
    """Order the nodes so that every edge goes from an earlier to a later node (Kahn's algorithm).

    The backward pass visits the nodes in the reverse of this order.

    Raises:
        ValueError: if the edges contain a cycle.
    """
    edges = batchnorm_graph_edges() if edges is None else edges
    nodes: list[str] = []
    for edge in edges:
        for name in (edge.tail, edge.head):
            if name not in nodes:
                nodes.append(name)
    indegree = {name: 0 for name in nodes}
    for edge in edges:
        indegree[edge.head] += 1
    ready = [name for name in nodes if indegree[name] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for edge in edges:
            if edge.tail == name:
                indegree[edge.head] -= 1
                if indegree[edge.head] == 0:
                    ready.append(edge.head)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle; no topological order exists")
    return order


# (column, row) of each node: the main path on the top row, the variance branch below.
_NODE_POSITIONS: dict[str, tuple[float, float]] = {
    "x": (0.0, 1.0),
    "mu": (1.2, 2.0),
    "x-mu": (2.4, 1.0),
    "(x-mu)^2": (3.6, 0.0),
    "var": (5.1, 0.0),
    "var+eps": (6.6, 0.0),
    "sqrt": (8.1, 0.0),
    "1/sqrt": (9.6, 0.0),
    "xhat": (10.8, 1.0),
    "gamma": (10.8, 2.0),
    "gamma*xhat": (12.0, 1.0),
    "beta": (12.0, 2.0),
    "+beta": (13.2, 1.0),
    "y": (14.4, 1.0),
}

_NODE_LABELS: dict[str, str] = {
    "x": r"$x$",
    "mu": r"$\mu_\mathcal{B}$",
    "x-mu": r"$x-\mu_\mathcal{B}$",
    "(x-mu)^2": r"$(x-\mu_\mathcal{B})^2$",
    "var": r"$\sigma^2_\mathcal{B}$",
    "var+eps": r"$\sigma^2_\mathcal{B}+\epsilon$",
    "sqrt": r"$\sqrt{\cdot}$",
    "1/sqrt": r"$1/\sqrt{\cdot}$",
    "xhat": r"$\hat{x}$",
    "gamma": r"$\gamma$",
    "gamma*xhat": r"$\gamma\hat{x}$",
    "beta": r"$\beta$",
    "+beta": r"$+\beta$",
    "y": r"$y$",
}


def draw_batchnorm_graph(ax: Axes | None = None, local_derivatives: bool = True) -> Figure:
    """Draw the BN computational graph: nodes as boxes, forward edges as arrows.

    Args:
        ax: axes to draw on; a new (14 x 3.8 inch) figure is made when None.
        local_derivatives: label each edge with d(head)/d(tail), the factor the backward
            pass multiplies by when it walks that edge in reverse.

    Returns:
        the matplotlib Figure holding the drawing.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(14, 3.8))
    else:
        fig = ax.figure
    for edge in batchnorm_graph_edges():
        (x0, y0), (x1, y1) = _NODE_POSITIONS[edge.tail], _NODE_POSITIONS[edge.head]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": "0.35", "shrinkA": 17, "shrinkB": 17},
        )
        if local_derivatives:
            # Put the label above the arrow: left of an upward edge, right of a downward one.
            slope = (y1 > y0) - (y1 < y0)
            ax.text(
                (x0 + x1) / 2 - 0.15 * slope,
                (y0 + y1) / 2 + 0.1,
                edge.local_derivative,
                ha={1: "right", 0: "center", -1: "left"}[slope],
                va="bottom",
                fontsize=10,
                color="tab:red",
            )
    for name, (col, row) in _NODE_POSITIONS.items():
        if name in PARAMETER_NODES:
            face = "#fde9c9"
        elif name in ("x", "y"):
            face = "#d6e6f5"
        else:
            face = "white"
        ax.text(
            col,
            row,
            _NODE_LABELS[name],
            ha="center",
            va="center",
            fontsize=11,
            bbox={"boxstyle": "round,pad=0.35", "facecolor": face, "edgecolor": "0.3"},
        )
    ax.set_xlim(-0.6, 15.0)
    ax.set_ylim(-0.5, 2.6)
    ax.set_axis_off()
    if local_derivatives:
        ax.set_title("Forward pass left to right; red: local derivative d(head)/d(tail)")
    return fig
