"""hashproxy's HTTP-free core: URL normalisation and routing keys, the ring, health, bounded loads."""

from __future__ import annotations

import math

import pytest

from hashproxy.balancer import HashBalancer, LeastConnections, NodeSet, RoundRobinBalancer
from hashproxy.health import HealthBoard
from hashproxy.loads import INFLIGHT, SharedCounters
from cluster.ring import Ring
from hashproxy.urls import BadTarget, Route, classify, normalise_path
from storage.keys import image_route_key

KEYS = [f"/photos/u{i % 37}/{100000 + i}_abcdef0123/{('small', 'medium', 'large')[i % 3]}" for i in range(20000)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nodeset(n: int, clock: Clock | None = None, rampup: float = 0.0, fail_threshold: int = 2) -> NodeSet:
    names = tuple(f"ypws{i + 1}" for i in range(n))
    health = HealthBoard(names, fail_threshold, rampup, clock or Clock())
    return NodeSet("ypws", names, tuple(("127.0.0.1", 1) for _ in names), health,
                   SharedCounters(1, names).role(0, 0, n))


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, key", [
    ("/photos/alice/123_abc/small.jpg", "/photos/alice/123_abc/small"),
    ("/photos/alice/123_abc/small.webp?v=abcd1234", "/photos/alice/123_abc/small"),
    ("/photos/alice/123_abc/small.avif?exp=1&sig=zz", "/photos/alice/123_abc/small"),
    ("/photos/alice/123_abc/original.png", "/photos/alice/123_abc/original"),
    ("//photos///alice/123_abc//small.jpg", "/photos/alice/123_abc/small"),
    ("/photos/%61lice/123%5Fabc/small.jpg", "/photos/alice/123_abc/small"),
    ("/photos/Alice/123_ABC/Small.JPG", "/photos/Alice/123_ABC/Small"),  # nothing lower-cased
])
def test_routing_key_drops_query_and_extension_and_normalises(raw, key):
    target = classify("GET", raw.encode())
    assert target.route is Route.IMAGE
    assert target.key == key


def test_all_formats_and_versions_of_a_size_share_one_key():
    keys = {classify("GET", u.encode()).key for u in (
        "/photos/a/1_s/small.jpg", "/photos/a/1_s/small.webp", "/photos/a/1_s/small.avif?v=1",
        "/photos/a/1_s/small.jpg?v=2", "/photos/a/1_s/small")}
    assert keys == {"/photos/a/1_s/small"}


def test_reserved_escapes_are_kept_but_uppercased():
    assert normalise_path(b"/a%3ab/%7e") == "/a%3Ab/~"


@pytest.mark.parametrize("raw, status, code", [
    ("/photos/a/1_s/../x.jpg", 400, "bad_path"),
    ("/photos/a/%2e%2e/x.jpg", 400, "bad_path"),
    ("/photos/a/1_s/%ff.jpg", 400, "bad_encoding"),
    ("/photos/a/1_s/%zz.jpg", 400, "bad_escape"),
    ("/photos/a/1_s/%00.jpg", 400, "bad_path"),
    ("photos/a", 400, "bad_target"),
])
def test_bad_targets_are_refused(raw, status, code):
    with pytest.raises(BadTarget) as err:
        classify("GET", raw.encode())
    assert (err.value.status, err.value.code) == (status, code)


@pytest.mark.parametrize("method, raw, route", [
    ("GET", "/", Route.PAGE), ("GET", "/u/alice", Route.PAGE), ("GET", "/p/123", Route.PAGE),
    ("GET", "/upload", Route.PAGE), ("POST", "/upload", Route.YPFS), ("GET", "/api/photos", Route.YPFS),
    ("DELETE", "/api/photos/1", Route.YPFS), ("GET", "/static/app.css", Route.PAGE),
    ("GET", "/healthz", Route.HEALTH), ("GET", "/metrics", Route.METRICS),
    ("HEAD", "/photos/a/1_s/small.jpg", Route.IMAGE), ("PURGE", "/photos/a/1_s/small.jpg", Route.YPFS),
    ("PURGE", "/photos/a/1_s/small", Route.YPFS), ("PURGE", "/photos/a/1_s/", Route.YPFS),
    ("PURGE", "/photos/", Route.YPFS),
    ("GET", "http://example.com/photos/a/1_s/small.jpg", Route.IMAGE),
])
def test_routes(method, raw, route):
    assert classify(method, raw.encode()).route is route


def test_methods_not_allowed():
    for method, raw in (("POST", "/photos/a/1_s/small.jpg"), ("PURGE", "/u/alice")):
        with pytest.raises(BadTarget) as err:
            classify(method, raw.encode())
        assert err.value.status == 405


def test_image_key_needs_the_full_shape():
    assert image_route_key("/photos/a/1_s") is None
    assert image_route_key("/photos/a/1_s/") is None
    assert image_route_key("/photos/a/1_s/x/y.jpg") is None


# -- the ring -------------------------------------------------------------------------------------


def test_ring_orders_are_deterministic_and_independent_of_node_list_order():
    a = Ring(["ypws1", "ypws2", "ypws3", "ypws4"])
    b = Ring(["ypws4", "ypws2", "ypws1", "ypws3"])
    for key in KEYS[:2000]:
        assert a.order_names(key) == b.order_names(key)


def test_shares_are_even():
    ring = Ring([f"ypws{i}" for i in range(1, 5)])
    counts = {}
    for key in KEYS:
        counts[ring.owner(key)] = counts.get(ring.owner(key), 0) + 1
    assert len(counts) == 4
    assert max(counts.values()) / min(counts.values()) < 1.1


def test_removing_a_node_moves_only_its_keys_to_their_next_choice():
    full = Ring(["ypws1", "ypws2", "ypws3", "ypws4"])
    less = Ring(["ypws1", "ypws2", "ypws4"])
    moved = 0
    for key in KEYS:
        before, after = full.owner(key), less.owner(key)
        if before != "ypws3":
            assert after == before
        else:
            moved += 1
            assert after == full.order_names(key)[1]
    assert abs(moved / len(KEYS) - 0.25) < 0.02


def test_adding_a_node_moves_only_keys_to_it_about_one_in_n():
    four = Ring(["ypws1", "ypws2", "ypws3", "ypws4"])
    five = Ring(["ypws1", "ypws2", "ypws3", "ypws4", "ypws5"])
    moved = [k for k in KEYS if four.owner(k) != five.owner(k)]
    assert all(five.owner(k) == "ypws5" for k in moved)
    assert len(moved) / len(KEYS) <= 1 / 5 + 0.05


# -- health and ramp-up ---------------------------------------------------------------------------


def test_node_goes_down_after_threshold_and_its_keys_move_to_their_next_choice():
    clock = Clock()
    nodes = nodeset(3, clock, rampup=10.0)
    bal = HashBalancer(nodes, factor=0)
    assert not nodes.health.failure(1)
    assert nodes.health.failure(1)  # second failure in a row: out
    for key in KEYS[:3000]:
        order = bal.ring.order(key)
        expect = [i for i in order if i != 1]
        assert bal.choose(key)[0] == expect[0]


def test_success_resets_the_failure_count():
    nodes = nodeset(2)
    nodes.health.failure(0)
    nodes.health.success(0)
    assert not nodes.health.failure(0)
    assert nodes.health.is_up(0)


def test_rejoining_node_ramps_up_its_share_monotonically():
    clock = Clock()
    nodes = nodeset(3, clock, rampup=10.0)
    bal = HashBalancer(nodes, factor=0)
    keys = KEYS[:6000]
    owned = [k for k in keys if bal.ring.order(k)[0] == 1]
    nodes.health.failure(1)
    nodes.health.failure(1)
    assert not any(bal.choose(k)[0] == 1 for k in keys)
    assert nodes.health.success(1)  # back: ramp starts now
    previous: set[str] = set()
    for t in (0.0, 2.5, 5.0, 7.5, 10.0):
        clock.now = 1000.0 + t
        mine = {k for k in keys if bal.choose(k)[0] == 1}
        assert mine <= set(owned)            # it only takes back its own keys
        assert previous <= mine              # and never gives one back while ramping
        assert abs(len(mine) / len(owned) - t / 10.0) < 0.06
        previous = mine
    assert previous == set(owned)
    assert nodes.health.steady()


# -- bounded loads ------------------------------------------------------------------------------------


def test_bounded_loads_spill_a_hot_key_along_its_own_order():
    nodes = nodeset(4)
    bal = HashBalancer(nodes, factor=1.25)
    hot = KEYS[0]
    order = bal.ring.order(hot)
    chosen = []
    for _ in range(40):  # 40 concurrent requests for one URL, none finishing
        node = bal.choose(hot)[0]
        nodes.counters.add(node, INFLIGHT)
        chosen.append(node)
    loads = [nodes.counters.inflight(i) for i in range(4)]
    assert sum(loads) == 40
    assert max(loads) <= math.ceil(1.25 * 40 / 4)
    # spill follows the URL's order: the first choice fills first, then the second...
    assert chosen[0] == order[0]
    first_spill = next(n for n in chosen if n != order[0])
    assert first_spill == order[1]


def test_bounded_loads_keep_cold_keys_pinned_when_loads_are_even():
    nodes = nodeset(4)
    bal = HashBalancer(nodes, factor=1.25)
    for i in range(4):
        nodes.counters.add(i, INFLIGHT, 5)
    for key in KEYS[:2000]:
        assert bal.choose(key)[0] == bal.ring.order(key)[0]


def test_bounded_loads_off_pins_everything():
    nodes = nodeset(3)
    bal = HashBalancer(nodes, factor=0)
    nodes.counters.add(bal.ring.order(KEYS[0])[0], INFLIGHT, 1000)
    assert bal.choose(KEYS[0])[0] == bal.ring.order(KEYS[0])[0]


def test_skewed_workload_max_over_mean_stays_within_the_factor():
    """A closed-loop simulation: 32 requests always in flight, Zipf-skewed keys, random completion order."""
    import random

    rng = random.Random(7)
    nodes = nodeset(4)
    bal = HashBalancer(nodes, factor=1.25)
    weights = [1 / (r + 1) ** 1.2 for r in range(500)]
    keys = rng.choices(KEYS[:500], weights, k=20000)
    inflight: list[int] = []
    served = [0] * 4
    for key in keys:
        if len(inflight) == 32:
            done = inflight.pop(rng.randrange(32))
            nodes.counters.add(done, INFLIGHT, -1)
        node = bal.choose(key)[0]
        nodes.counters.add(node, INFLIGHT)
        inflight.append(node)
        served[node] += 1
        assert nodes.counters.inflight(node) <= math.ceil(1.25 * len(inflight) / 4)
    assert max(served) / (sum(served) / 4) <= 1.25


# -- other balancers, purge targets --------------------------------------------------------------------


def test_least_connections_picks_the_idlest_up_node():
    nodes = nodeset(3)
    lc = LeastConnections(nodes)
    nodes.counters.add(0, INFLIGHT, 3)
    nodes.counters.add(1, INFLIGHT, 1)
    nodes.counters.add(2, INFLIGHT, 2)
    assert lc.choose()[0] == 1
    nodes.health.failure(1)
    nodes.health.failure(1)
    assert lc.choose()[0] == 2
    assert 1 not in lc.choose()


def test_round_robin_rotates_over_up_nodes():
    nodes = nodeset(3)
    rr = RoundRobinBalancer(nodes)
    assert {rr.choose(KEYS[0])[0] for _ in range(3)} == {0, 1, 2}


def test_bounded_loads_do_not_spill_below_the_minimum_load():
    nodes = nodeset(4)
    bal = HashBalancer(nodes, factor=1.25, min_load=8)
    hot = KEYS[1]
    first = bal.ring.order(hot)[0]
    for _ in range(8):  # a light cluster: one node may take 8 before it counts as overloaded
        node = bal.choose(hot)[0]
        assert node == first
        nodes.counters.add(node, INFLIGHT)
    assert bal.choose(hot)[0] != first


