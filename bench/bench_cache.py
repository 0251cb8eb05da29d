"""Cache policies on real request traces (issue 16): eviction and admission, then placement.

1. Eviction. Every candidate policy of ``ypws.policies`` replays the two shared real traces
   (World Cup 98 day 6 sample, BU 1998 proxy trace; ``ypws.traces``) at 1..10% of the working
   set in 1% steps (so a cliff shows), and a synthetic Zipf trace at 1, 5 and 10%: object and
   byte hit ratio, no warm-up excluded, the conventions of ../shared/traces/PROVENANCE.md.
   The goal, at 1/5/10% on the three traces: the default's object hit ratio within 1 point of
   the best of LRU, S4LRU, SIEVE and S3-FIFO, its byte hit ratio not below LRU's, and no fall
   of either ratio as the cache grows (checked on the 1% grid of the real traces). AdaptSize's
   coins are pseudo-random, so S3-FIFO+AdaptSize is also replayed with three other coin streams:
   the spread shows how much of its figures is luck. The default's nth-miss admission has no
   coin but one constant (c as a share of the cache); the World Cup grid is replayed with other
   values of it, to show how much room the goal leaves.
2. Placement. The default policy, on the real traces, with the same total bytes as one cache,
   as four caches behind hashproxy's rendezvous hash (``cluster.ring``, keyed by object), and as four caches
   taking requests in turn (round-robin).

Figures go to bench/results/latest.json under "cache_policies".
"""

from __future__ import annotations

import multiprocessing
import os
import time

from bench.results import record, table
from cluster.config import load_dict
from cluster.ring import Ring
from ypws import traces
from ypws.policies import NTHMISS_C, make_cache
from ypws.simulate import access, object_sizes, zipf_trace

DEFAULT = load_dict()["ypws"]["cache_policy"]
BASELINES = ("lru", "s4lru", "sieve", "s3fifo")
CANDIDATES = (*BASELINES, "lru+adaptsize", "sieve+adaptsize", "s3fifo+adaptsize", "sieve+nthmiss", "s3fifo+nthmiss")
GOAL_POINTS = (1, 5, 10)          # % of the working set
GRID = tuple(range(1, 11))        # % of the working set, for the real traces
ZIPF = {"objects": 20_000, "requests": 200_000, "alpha": 0.9, "seed": 7}
NODES = 4
SALTS = ("/1", "/2", "/3")        # other AdaptSize coin streams
COIN_POLICY = "s3fifo+adaptsize"  # the policy replayed with them
NTHMISS_C_FRACTIONS = (0.12, 0.14, 0.145, 0.155, 0.17, 0.2)  # other values of nth-miss's c (NTHMISS_C), World Cup grid

_WORKLOADS: dict[str, tuple[list[int], list[int]]] = {}


def load_workloads() -> dict[str, tuple[list[int], list[int]]]:
    if not traces.available():
        raise RuntimeError(f"the shared traces are not at {traces.TRACES_DIR}")
    out = {name: traces.load(name) for name in traces.HIT_RATIO_TRACES}
    sizes = object_sizes(ZIPF["objects"], seed=ZIPF["seed"])
    out["zipf"] = (zipf_trace(ZIPF["objects"], ZIPF["requests"], ZIPF["alpha"], ZIPF["seed"]), sizes)
    return out


def _replay(job: tuple[str, str, int, str]) -> tuple[tuple[str, str, int, str], float, float]:
    """One replay; ``variant`` is an AdaptSize coin salt ("/1") or an nth-miss c fraction ("c=0.12")."""
    name, policy, pct, variant = job
    trace, sizes = _WORKLOADS[name]
    maxsize = sum(sizes) * pct // 100
    cache = make_cache(policy, maxsize, getsizeof=int)
    if variant.startswith("c="):
        cache.nthmiss_c = float(variant[2:]) * maxsize
    else:
        cache.coin_salt = variant
    hits = bytes_hit = requested = 0
    for obj in trace:
        size = sizes[obj]
        requested += size
        if access(cache, obj, size):
            hits += 1
            bytes_hit += size
    return job, 100 * hits / len(trace), 100 * bytes_hit / requested


def _placement(job: tuple[str, int]) -> tuple[tuple[str, int], dict[str, dict[str, float]]]:
    """One cache of the total size, NODES caches by rendezvous hash of the object, NODES in turn."""
    name, pct = job
    trace, sizes = _WORKLOADS[name]
    total = sum(sizes) * pct // 100
    ring = Ring([f"ypws{i + 1}" for i in range(NODES)])
    home = [ring.order(str(obj))[0] for obj in range(len(sizes))]
    one = make_cache(DEFAULT, total, getsizeof=int)
    by_hash = [make_cache(DEFAULT, total // NODES, getsizeof=int) for _ in range(NODES)]
    by_turn = [make_cache(DEFAULT, total // NODES, getsizeof=int) for _ in range(NODES)]
    hits = {"one_cache": [0, 0], "url_hash": [0, 0], "round_robin": [0, 0]}
    requested = 0
    for i, obj in enumerate(trace):
        size = sizes[obj]
        requested += size
        for scheme, cache in (("one_cache", one), ("url_hash", by_hash[home[obj]]), ("round_robin", by_turn[i % NODES])):
            if access(cache, obj, size):
                hits[scheme][0] += 1
                hits[scheme][1] += size
    return job, {k: {"object_hit": round(100 * h / len(trace), 2), "byte_hit": round(100 * b / requested, 2)}
                 for k, (h, b) in hits.items()}


def largest_fall(series: list[float]) -> tuple[float, int]:
    """(the largest drop from one grid point to the next, the % where it lands); (0, 0) if none."""
    drops = [(round(a - b, 2), GRID[i + 1]) for i, (a, b) in enumerate(zip(series, series[1:])) if b < a]
    return max(drops) if drops else (0.0, 0)


def _falls(by_pct: dict) -> dict:
    """The largest falls of one policy's object and byte hit ratio over the grid."""
    obj_fall, obj_at = largest_fall([by_pct[f"{g}pct"]["object_hit"] for g in GRID])
    byte_fall, byte_at = largest_fall([by_pct[f"{g}pct"]["byte_hit"] for g in GRID])
    return {"object_points": obj_fall, "object_at_pct": obj_at, "byte_points": byte_fall, "byte_at_pct": byte_at}


def goal_points(policy: str, eviction: dict, falls: dict, only: tuple[str, ...] = ()) -> tuple[list[dict], list[str]]:
    """The goal at each point for ``policy``: (one row per trace and size, the misses in words)."""
    points, misses = [], []
    for name in only or tuple(eviction):
        for pct in GOAL_POINTS:
            at = f"{pct}pct"
            best_p = max(BASELINES, key=lambda p: eviction[name][p][at]["object_hit"])
            d, best, lru = eviction[name][policy][at], eviction[name][best_p][at], eviction[name]["lru"][at]
            point = {"trace": name, "cache_pct": pct, "object_hit": d["object_hit"], "best_baseline": best_p,
                     "best_object_hit": best["object_hit"], "object_gap": round(best["object_hit"] - d["object_hit"], 2),
                     "byte_hit": d["byte_hit"], "lru_byte_hit": lru["byte_hit"],
                     "byte_margin": round(d["byte_hit"] - lru["byte_hit"], 2)}
            point["met"] = point["object_gap"] <= 1.0 and point["byte_margin"] >= 0
            points.append(point)
            if point["object_gap"] > 1.0:
                misses.append(f"{name} {pct}%: object hit ratio {point['object_gap']:.2f} points below {best_p}'s")
            if point["byte_margin"] < 0:
                misses.append(f"{name} {pct}%: byte hit ratio {-point['byte_margin']:.2f} points below LRU's")
    for name in only or traces.HIT_RATIO_TRACES:
        f = falls[name][policy]
        for kind in ("object", "byte"):
            if f[f"{kind}_points"]:
                misses.append(f"{name}: {kind} hit ratio falls by {f[f'{kind}_points']} points "
                              f"at {f[f'{kind}_at_pct']}% of the working set")
    return points, misses


def run() -> dict:
    global _WORKLOADS
    _WORKLOADS = load_workloads()
    policies = CANDIDATES if DEFAULT in CANDIDATES else (*CANDIDATES, DEFAULT)
    jobs = [(name, p, pct, "") for name in _WORKLOADS for p in policies
            for pct in (GOAL_POINTS if name == "zipf" else GRID)]
    jobs += [(name, COIN_POLICY, pct, salt) for name in _WORKLOADS for pct in GOAL_POINTS for salt in SALTS]
    if DEFAULT.endswith("+nthmiss"):
        jobs += [("wc98_day6", DEFAULT, pct, f"c={f}") for f in NTHMISS_C_FRACTIONS for pct in GRID]
    place_jobs = [(name, pct) for name in traces.HIT_RATIO_TRACES for pct in GOAL_POINTS]
    t0 = time.monotonic()
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        place_async = pool.map_async(_placement, place_jobs)
        results = {job: (obj, byte) for job, obj, byte in pool.imap_unordered(_replay, jobs)}
        placement = dict(place_async.get())
    elapsed = time.monotonic() - t0

    # -- the eviction table -------------------------------------------------------------------------
    eviction: dict = {}
    for (name, p, pct, salt), (obj, byte) in results.items():
        if not salt:
            eviction.setdefault(name, {}).setdefault(p, {})[f"{pct}pct"] = {"object_hit": round(obj, 2),
                                                                            "byte_hit": round(byte, 2)}
    rows = []
    for name in _WORKLOADS:
        for pct in GOAL_POINTS:
            row = {"trace": name, "cache": f"{pct}%"}
            for p in policies:
                f = eviction[name][p][f"{pct}pct"]
                row[p + ("*" if p == DEFAULT else "")] = f"{f['object_hit']:.1f}/{f['byte_hit']:.1f}"
            rows.append(row)
    columns = ["trace", "cache", *(p + ("*" if p == DEFAULT else "") for p in policies)]
    print(f"\nObject / byte hit ratio (%) by policy; * = the default ({DEFAULT}); {elapsed:.0f}s of replays")
    print(table(rows, columns))

    # -- cliffs ----------------------------------------------------------------------------------
    falls: dict = {}
    fall_rows = []
    for name in traces.HIT_RATIO_TRACES:
        for p in policies:
            falls.setdefault(name, {})[p] = _falls(eviction[name][p])
            obj_fall, obj_at, byte_fall, byte_at = falls[name][p].values()
            fall_rows.append({"trace": name, "policy": p + ("*" if p == DEFAULT else ""),
                              "object_fall": f"{obj_fall:.1f} (to {obj_at}%)" if obj_fall else "none",
                              "byte_fall": f"{byte_fall:.1f} (to {byte_at}%)" if byte_fall else "none"})
    print("\nLargest fall of a hit ratio (points) from one cache size to the next larger one, 1..10% grid")
    print(table(fall_rows, ["trace", "policy", "object_fall", "byte_fall"]))

    # -- the goal --------------------------------------------------------------------------------
    points, misses = goal_points(DEFAULT, eviction, falls)
    print(f"\nGoal for the default ({DEFAULT}) at 1/5/10%: object hit ratio within 1 point of the best of "
          f"{', '.join(BASELINES)}; byte hit ratio >= LRU's; no fall as the cache grows")
    print(table(points, ["trace", "cache_pct", "object_hit", "best_baseline", "best_object_hit", "object_gap",
                         "byte_hit", "lru_byte_hit", "byte_margin", "met"]))
    print("goal met everywhere" if not misses else "goal NOT met: " + "; ".join(misses))

    # -- the noise of AdaptSize's coins --------------------------------------------------------
    coin_spread: dict = {}
    for name in _WORKLOADS:
        for pct in GOAL_POINTS:
            own = eviction[name][COIN_POLICY][f"{pct}pct"]
            runs = [(own["object_hit"], own["byte_hit"])] + [results[(name, COIN_POLICY, pct, s)] for s in SALTS]
            coin_spread.setdefault(name, {})[f"{pct}pct"] = {
                "object_hit": [round(min(o for o, _ in runs), 2), round(max(o for o, _ in runs), 2)],
                "byte_hit": [round(min(b for _, b in runs), 2), round(max(b for _, b in runs), 2)]}
    print(f"\n{COIN_POLICY} with {len(SALTS) + 1} coin streams (min..max, %):")
    print(table([{"trace": n, "cache": at, "object_hit": "{:.1f}..{:.1f}".format(*v["object_hit"]),
                  "byte_hit": "{:.1f}..{:.1f}".format(*v["byte_hit"])}
                 for n, by in coin_spread.items() for at, v in by.items()], ["trace", "cache", "object_hit", "byte_hit"]))

    # -- how much room the default's constant has ------------------------------------------------
    sensitivity: dict = {}
    if DEFAULT.endswith("+nthmiss"):
        for f in NTHMISS_C_FRACTIONS:
            ev = {name: dict(by) for name, by in eviction.items()}
            ev["wc98_day6"] = {**eviction["wc98_day6"], DEFAULT: {
                f"{g}pct": dict(zip(("object_hit", "byte_hit"), (round(v, 2) for v in results[("wc98_day6", DEFAULT, g, f"c={f}")])))
                for g in GRID}}
            fall = {"wc98_day6": {DEFAULT: _falls(ev["wc98_day6"][DEFAULT])}}
            _, missed = goal_points(DEFAULT, ev, fall, only=("wc98_day6",))
            sensitivity[str(f)] = {"eviction": ev["wc98_day6"][DEFAULT], "not_met": missed}
        print(f"\n{DEFAULT} on World Cup with another c (default {NTHMISS_C} of the cache):")
        print(table([{"c": f, "goal on World Cup": "met" if not v["not_met"] else "; ".join(v["not_met"])}
                     for f, v in sensitivity.items()], ["c", "goal on World Cup"]))

    # -- placement -------------------------------------------------------------------------------
    place_rows, place_out = [], {}
    for (name, pct), figures in sorted(placement.items()):
        place_out.setdefault(name, {})[f"{pct}pct"] = figures
        place_rows.append({"trace": name, "total": f"{pct}%",
                           **{k: f"{v['object_hit']:.1f}/{v['byte_hit']:.1f}" for k, v in figures.items()}})
    print(f"\nPlacement, {DEFAULT}, same total bytes: one cache vs {NODES} nodes by URL hash vs {NODES} round-robin "
          "(object / byte hit ratio, %)")
    print(table(place_rows, ["trace", "total", "one_cache", "url_hash", "round_robin"]))

    return {
        "default": DEFAULT, "policies": list(policies), "baselines": list(BASELINES),
        "workloads": {name: {"requests": len(t), "objects": len(s), "working_set_bytes": sum(s)}
                      for name, (t, s) in _WORKLOADS.items()},
        "zipf": ZIPF, "eviction": eviction, "largest_fall": falls,
        "goal": {"met": not misses, "not_met": misses, "points": points},
        "coin_spread": {"policy": COIN_POLICY, "salts": len(SALTS) + 1, "by_trace": coin_spread},
        "nthmiss_c_sensitivity": {"default_c": NTHMISS_C, "trace": "wc98_day6", "by_c": sensitivity},
        "placement": {"nodes": NODES, "policy": DEFAULT, "by_trace": place_out},
        "replay_seconds": round(elapsed, 1),
    }


def main() -> None:
    record("cache_policies", run())


if __name__ == "__main__":
    main()
