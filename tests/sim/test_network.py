"""The network model against cases worked by hand."""

from __future__ import annotations

import heapq

import pytest

from shoal.sim.network import Flow, Network, waterfill


def run(net: Network, flows: list[Flow]) -> dict[int, float]:
    """Drive the network to the end; finish time per flow (by index in ``flows``)."""
    heap: list[tuple[float, int, Flow, int]] = []
    seq = 0

    def schedule(f: Flow) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (f.finish, seq, f, f.version))

    net.settle(0.0, schedule)
    done: dict[int, float] = {}
    while heap:
        t, _, f, version = heapq.heappop(heap)
        if f.version != version:
            continue
        net.stop(f, t)
        done[flows.index(f)] = t
        net.settle(t, schedule)
    return done


def test_waterfill_gives_leftovers_to_the_unconstrained() -> None:
    assert waterfill(100, [100, 100]) == [50, 50]
    assert waterfill(100, [30, 100]) == [30, 70]
    assert waterfill(90, [10, 20, 100]) == [10, 20, 60]
    assert waterfill(10, []) == []


def test_one_transfer_runs_at_the_slower_end() -> None:
    net = Network(depth=2)
    a, b = net.add_node(100.0, 0.0), net.add_node(0.0, 40.0)
    f = net.start(a, b, 1000.0, 0.0, (0, 0))
    assert run(net, [f]) == {0: pytest.approx(25.0)}


def test_two_transfers_share_an_uplink_then_one_takes_it_all() -> None:
    net = Network(depth=2)
    a = net.add_node(100.0, 0.0)
    b, c = net.add_node(0.0, 100.0), net.add_node(0.0, 100.0)
    f1 = net.start(a, b, 500.0, 0.0, (0, 0))
    f2 = net.start(a, c, 1000.0, 0.0, (0, 1))
    done = run(net, [f1, f2])
    # 50 B/s each: f1 ends at 10 s; f2 has 500 B left and gets the whole 100 B/s
    assert done == {0: pytest.approx(10.0), 1: pytest.approx(15.0)}


def test_a_slow_receiver_leaves_its_share_to_the_other() -> None:
    net = Network(depth=2)
    a = net.add_node(100.0, 0.0)
    b, c = net.add_node(0.0, 30.0), net.add_node(0.0, 100.0)
    f1 = net.start(a, b, 300.0, 0.0, (0, 0))
    f2 = net.start(a, c, 700.0, 0.0, (0, 1))
    net.settle(0.0, lambda f: None)
    assert f1.rate == pytest.approx(30.0) and f2.rate == pytest.approx(70.0)
    assert f1.finish == pytest.approx(10.0) and f2.finish == pytest.approx(10.0)


def test_a_chain_runs_every_hop_at_line_rate() -> None:
    net = Network(depth=2)
    a, b, c = (net.add_node(100.0, 100.0) for _ in range(3))
    f1 = net.start(a, b, 1000.0, 0.0, (0, 0))
    f2 = net.start(b, c, 1000.0, 0.0, (0, 1))
    assert run(net, [f1, f2]) == {0: pytest.approx(10.0), 1: pytest.approx(10.0)}


def test_two_senders_share_a_downlink() -> None:
    net = Network(depth=2)
    a, b = net.add_node(100.0, 0.0), net.add_node(100.0, 0.0)
    c = net.add_node(0.0, 100.0)
    f1 = net.start(a, c, 1000.0, 0.0, (0, 0))
    f2 = net.start(b, c, 500.0, 0.0, (0, 1))
    assert run(net, [f1, f2]) == {0: pytest.approx(15.0), 1: pytest.approx(10.0)}


def test_a_late_flow_slows_the_running_one_from_then_on() -> None:
    net = Network(depth=2)
    a = net.add_node(100.0, 0.0)
    b, c = net.add_node(0.0, 100.0), net.add_node(0.0, 100.0)
    f1 = net.start(a, b, 1000.0, 0.0, (0, 0))
    net.settle(0.0, lambda f: None)
    f2 = net.start(a, c, 200.0, 5.0, (0, 1))  # f1 has 500 B left at 5 s
    net.settle(5.0, lambda f: None)
    assert f1.finish == pytest.approx(5.0 + 500.0 / 50.0)
    assert f2.finish == pytest.approx(9.0)
    assert "2 flows" in repr(net)


def test_depth_one_never_oversubscribes_but_hands_out_leftovers_late() -> None:
    """The simulator's default: only the two links a change touches are refilled."""
    net = Network(depth=1)
    a, b = net.add_node(100.0, 0.0), net.add_node(100.0, 0.0)
    c = net.add_node(0.0, 100.0)
    f1 = net.start(a, c, 1000.0, 0.0, (0, 0))
    f2 = net.start(b, c, 500.0, 0.0, (0, 1))
    done = run(net, [f1, f2])
    # f1 keeps 50 B/s after f2 ends (its sender's link is not refilled): 20 s, not 15
    assert done == {0: pytest.approx(20.0), 1: pytest.approx(10.0)}


def test_a_host_with_cpu_to_spare_leaves_the_links_alone() -> None:
    # two transfers at 100 B/s, each costing 0.005 CPU-s per byte: 1 core in all
    net = Network(depth=2, cores=1.0)
    a, b = net.add_node(100.0, 0.0), net.add_node(100.0, 0.0)
    c, d = (net.add_node(0.0, 100.0, recv_cost=0.005) for _ in range(2))
    f1 = net.start(a, c, 1000.0, 0.0, (0, 0))
    f2 = net.start(b, d, 1000.0, 0.0, (0, 1))
    assert run(net, [f1, f2]) == {0: pytest.approx(10.0), 1: pytest.approx(10.0)}


def test_a_saturated_host_slows_every_transfer_alike_until_one_ends() -> None:
    # the same transfers on half a core: each at 50 B/s; when the first ends at 10 s,
    # the other needs only 0.5 core at its link rate and gets it: 500 B left at 100 B/s
    def two() -> tuple[Network, list[Flow]]:
        net = Network(depth=2, cores=0.5)
        a, b = net.add_node(100.0, 0.0), net.add_node(100.0, 0.0)
        c, d = (net.add_node(0.0, 100.0, recv_cost=0.005) for _ in range(2))
        return net, [net.start(a, c, 500.0, 0.0, (0, 0)), net.start(b, d, 1000.0, 0.0, (0, 1))]

    net, flows = two()
    net.settle(0.0, lambda f: None)
    assert [f.rate for f in flows] == [pytest.approx(50.0), pytest.approx(50.0)]
    assert "CPU 1.00/0.5 cores" in repr(net)
    net, flows = two()
    assert run(net, flows) == {0: pytest.approx(10.0), 1: pytest.approx(15.0)}


def test_sender_and_receiver_costs_add_up_per_byte() -> None:
    # 0.002 s/B to send + 0.003 s/B to receive at 100 B/s is 0.5 core; a quarter core
    # halves the rate: 1000 B in 20 s
    net = Network(depth=2, cores=0.25)
    a = net.add_node(100.0, 0.0, send_cost=0.002)
    b = net.add_node(0.0, 100.0, recv_cost=0.003)
    f = net.start(a, b, 1000.0, 0.0, (0, 0))
    assert run(net, [f]) == {0: pytest.approx(20.0)}
    assert net.demand == 0.0


def test_cpu_and_links_both_bind_a_chain() -> None:
    # a -> b -> c at 100 B/s per link; b forwards: it pays 0.004 s/B to receive and
    # 0.001 s/B to send, so the chain needs 0.4 + 0.1 = 0.5 core; on 0.25 core both hops
    # run at 50 B/s
    net = Network(depth=2, cores=0.25)
    a = net.add_node(100.0, 100.0)
    b = net.add_node(100.0, 100.0, send_cost=0.001, recv_cost=0.004)
    c = net.add_node(100.0, 100.0)
    f1 = net.start(a, b, 1000.0, 0.0, (0, 0))
    f2 = net.start(b, c, 1000.0, 0.0, (0, 1))
    assert run(net, [f1, f2]) == {0: pytest.approx(20.0), 1: pytest.approx(20.0)}


def test_a_flow_passing_another_on_never_outruns_it_and_leaves_the_rest() -> None:
    # b passes on to c what a sends it (``up=``): 30 B/s while a's 300 B last, and b's
    # other child takes the other 70; after 10 s they share b's uplink, then c has it all
    def three() -> tuple[Network, list[Flow]]:
        net = Network(depth=2)
        a = net.add_node(30.0, 100.0)
        b, c, d = (net.add_node(100.0, 100.0) for _ in range(3))
        f1 = net.start(a, b, 300.0, 0.0, (0, 0))
        return net, [
            f1,
            net.start(b, c, 1000.0, 0.0, (0, 0), up=f1),
            net.start(b, d, 1000.0, 0.0, (0, 1)),
        ]

    net, flows = three()
    net.settle(0.0, lambda f: None)
    assert [f.rate for f in flows] == [30.0, 30.0, 70.0]
    net, flows = three()
    assert run(net, flows) == {
        0: pytest.approx(10.0),
        1: pytest.approx(20.0),
        2: pytest.approx(16.0),
    }
    assert net.capped == 0 and flows[0].kids is None


def test_caps_hold_down_a_chain_and_follow_the_head_when_it_slows() -> None:
    # a -> b -> c -> d, each hop passing the one before on: all at a's 20 B/s until the
    # head's 200 B are in (10 s), then the next hop is free (200 B left at 100 B/s)
    net, flows = Network(depth=1), list[Flow]()
    a = net.add_node(20.0, 100.0)
    b, c, d = (net.add_node(100.0, 100.0) for _ in range(3))
    for src, dst, size in ((a, b, 200.0), (b, c, 400.0), (c, d, 600.0)):
        flows.append(net.start(src, dst, size, 0.0, (0, 0), up=flows[-1] if flows else None))
    assert run(net, flows) == {
        0: pytest.approx(10.0),
        1: pytest.approx(12.0),
        2: pytest.approx(14.0),
    }
    # a flow joining the head's uplink halves the head, and with it the flow it caps
    net = Network(depth=1)
    a, b, c, e = (net.add_node(100.0, 100.0) for _ in range(4))
    f1 = net.start(a, b, 1000.0, 0.0, (0, 0))
    f2 = net.start(b, c, 1000.0, 0.0, (0, 0), up=f1)
    net.settle(0.0, lambda f: None)
    assert f1.rate == f2.rate == 100.0
    net.start(a, e, 250.0, 5.0, (0, 1))
    net.settle(5.0, lambda f: None)
    assert f1.rate == f2.rate == 50.0
