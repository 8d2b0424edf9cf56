"""The BN computational graph: structure, local derivatives and the figure."""

import matplotlib.pyplot as plt
import pytest

from bnlib.experiments.graph import (
    COMPUTATION_NODES,
    PARAMETER_NODES,
    GraphEdge,
    batchnorm_graph_edges,
    draw_batchnorm_graph,
    topological_order,
)


def test_graph_has_the_twelve_forward_nodes_and_two_parameters():
    names = {e.tail for e in batchnorm_graph_edges()} | {e.head for e in batchnorm_graph_edges()}
    assert names == set(COMPUTATION_NODES) | set(PARAMETER_NODES)
    assert len(COMPUTATION_NODES) == 12


def test_only_x_and_the_parameters_are_leaves_and_y_is_the_only_output():
    edges = batchnorm_graph_edges()
    heads = {e.head for e in edges}
    tails = {e.tail for e in edges}
    assert tails - heads == {"x", "gamma", "beta"}
    assert heads - tails == {"y"}


def test_x_minus_mu_feeds_both_the_variance_branch_and_xhat():
    # The fork is why its backward adds two gradient contributions.
    children = {e.head for e in batchnorm_graph_edges() if e.tail == "x-mu"}
    assert children == {"(x-mu)^2", "xhat"}
    assert {e.head for e in batchnorm_graph_edges() if e.tail == "x"} == {"mu", "x-mu"}


def test_topological_order_respects_every_edge():
    order = topological_order()
    position = {name: i for i, name in enumerate(order)}
    for edge in batchnorm_graph_edges():
        assert position[edge.tail] < position[edge.head]
    assert order[-1] == "y"


def test_topological_order_rejects_a_cycle():
    cycle = (GraphEdge("a", "b", "1"), GraphEdge("b", "a", "1"))
    with pytest.raises(ValueError, match="cycle"):
        topological_order(cycle)


def test_figure_draws_every_node_and_edge_label():
    fig = draw_batchnorm_graph()
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts if t.get_text()]
    # 14 node boxes + 15 local-derivative labels.
    assert len(texts) == 14 + len(batchnorm_graph_edges())
    assert r"$\hat{x}$" in texts and r"$\sigma^2_\mathcal{B}+\epsilon$" in texts
    plt.close(fig)


def test_figure_without_derivatives_draws_only_nodes_on_a_given_axes():
    fig, ax = plt.subplots()
    assert draw_batchnorm_graph(ax=ax, local_derivatives=False) is fig
    assert len([t for t in ax.texts if t.get_text()]) == 14
    plt.close(fig)
