"""Tests for autopipe/partition/replicas.py: rank placement on nodes and the all-reduce's price."""

from __future__ import annotations

import pytest

from autopipe.errors import PlanError
from autopipe.partition.problem import Config
from autopipe.partition.replicas import Cluster, GradSync, place, ring_allreduce_per_byte
from autopipe.plan_format import Device

INTRA, INTER = 450e9, 50e9


def cluster(gpus: int, per_node: int) -> Cluster:
    return Cluster(gpus=gpus, gpus_per_node=per_node, intra_bandwidth=INTRA, inter_bandwidth=INTER)


def test_ring_all_reduce_is_the_tied_gradient_formula() -> None:
    cfg = Config(num_stages=1, microbatches=1, schedule="1f1b", devices=(Device(name="d", memory=0),),
                 link_bandwidth=1e9, allreduce_bandwidth=INTER)
    for k in (1, 2, 3, 8):
        assert ring_allreduce_per_byte(k, INTER) * 3e9 == pytest.approx(cfg.allreduce_s(3e9, k), rel=1e-15)
    assert ring_allreduce_per_byte(4, 50e9) * 1e9 == pytest.approx(2 * 3 / 4 * 1e9 / 50e9, rel=1e-15)
    assert GradSync(replicas=1, bandwidth=INTER).per_byte == 0.0


def test_pipelines_keep_neighbours_in_a_node() -> None:
    pl = place(cluster(16, 8), 4, "pipelines")  # 4 replicas of a 4-stage pipeline, 2 per node
    assert pl.ranks == ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
    assert (pl.cuts_across_nodes, pl.cut_bandwidth) == (0, INTRA)
    assert (pl.groups_across_nodes, pl.group_bandwidth) == (4, INTER)


def test_replicas_keep_each_stage_in_a_node() -> None:
    pl = place(cluster(16, 8), 4, "replicas")
    assert pl.ranks == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15))
    assert (pl.cuts_across_nodes, pl.cut_bandwidth) == (1, INTER)  # stage 1 (node 0) → 2 (node 1)
    assert (pl.groups_across_nodes, pl.group_bandwidth) == (0, INTRA)


def test_long_pipelines_span_nodes_and_one_node_is_all_nvlink() -> None:
    pl = place(cluster(16, 8), 16, "pipelines")
    assert pl.ranks == tuple((s,) for s in range(16))
    assert (pl.cuts_across_nodes, pl.cut_bandwidth, pl.group_bandwidth) == (1, INTER, INTRA)
    for name in ("pipelines", "replicas"):
        pl = place(cluster(8, 8), 2, name)
        assert (pl.cut_bandwidth, pl.group_bandwidth) == (INTRA, INTRA)
        assert sorted(r for rs in pl.ranks for r in rs) == list(range(8))


def test_bad_clusters_say_what_to_change() -> None:
    with pytest.raises(PlanError, match="12 GPUs do not fill nodes of 8"):
        cluster(12, 8)
    with pytest.raises(PlanError, match="gpus_per_node = 0"):
        cluster(8, 0)
    with pytest.raises(PlanError, match="3 stages do not divide 8 GPUs"):
        place(cluster(8, 8), 3, "pipelines")
    with pytest.raises(PlanError, match="unknown placement 'rows'"):
        place(cluster(8, 8), 2, "rows")
    with pytest.raises(PlanError, match="inter-node bandwidth 0"):
        Cluster(gpus=8, gpus_per_node=8, intra_bandwidth=1.0, inter_bandwidth=0.0)


def test_a_measured_all_reduce_prices_groups_inside_a_node() -> None:
    measured = Cluster(gpus=8, gpus_per_node=8, intra_bandwidth=INTRA, inter_bandwidth=INTER,
                       intra_allreduce_bandwidth=1e9)
    pl = place(measured, 2, "pipelines")
    assert (pl.cut_bandwidth, pl.group_bandwidth) == (INTRA, 1e9)
    two = Cluster(gpus=16, gpus_per_node=8, intra_bandwidth=INTRA, inter_bandwidth=INTER,
                  intra_allreduce_bandwidth=1e9)
    assert place(two, 2, "pipelines").group_bandwidth == INTER  # across nodes: the NIC
