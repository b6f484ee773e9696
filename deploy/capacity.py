#!/usr/bin/env python3
"""The capacity model of docs/capacity.md: from measured inputs, what N proxy nodes cost the
fragment services, Redis and memory, with and without the shared cache tier.

    python3 deploy/capacity.py                      # the defaults of docs/capacity.md
    python3 deploy/capacity.py --pages-per-s 20000 --ttl-s 30 --nodes 1,2,3,10,100

Model (steady state, every fragment key requested as a Poisson stream):
- R pages/s over the cluster, F fragments per page, U distinct fragment keys, so each key is
  asked for at lam = R*F/U per second, lam/N on each of N nodes.
- A cache whose entries live T seconds refetches a key once per T + (mean wait for the next
  request after expiry): one node alone fetches it 1/(T + N/lam) times a second.
- Without the shared tier each node is its own cache: origin = U*N/(T + N/lam).
- With it, the first node to miss fetches for all (a lease elects it); the others find the
  entry in Redis: origin = U/(T + 1/lam), and every node's L1 miss is one Redis GET:
  redis_gets = U*N/(T + N/lam); each origin fetch adds a lease (SET NX), a SET and a DEL.
"""

import argparse


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages-per-s", type=float, default=5000, help="cluster page rate R")
    p.add_argument("--fragments", type=float, default=120, help="fragments per page F")
    p.add_argument("--keys", type=float, default=20000, help="distinct fragment keys U")
    p.add_argument("--ttl-s", type=float, default=60, help="fragment TTL T")
    p.add_argument("--fragment-bytes", type=float, default=4096, help="mean fragment size")
    p.add_argument(
        "--pages-per-core-s",
        type=float,
        default=1000,
        help="warm 120-fragment pages per second per core (cargo bench --bench load)",
    )
    p.add_argument("--cores", type=float, default=2, help="cores per node")
    p.add_argument(
        "--l1-capacity-mb", type=float, default=256, help="cache.fragment_capacity_bytes"
    )
    p.add_argument(
        "--l2-overhead",
        type=float,
        default=0.0,
        help="warm-path slowdown with the shared tier configured (0.02 = 2 %%)",
    )
    p.add_argument("--nodes", default="1,2,3,5,10,20,50,100", help="node counts to tabulate")
    p.add_argument(
        "--redis-ops-s",
        type=float,
        default=100000,
        help="what one Redis serves (single-threaded; measure with redis-benchmark)",
    )
    return p.parse_args()


def fetches_per_s(keys, ttl, lam_per_cache, caches):
    """Fetches per second when `caches` independent caches each see lam_per_cache per key."""
    if lam_per_cache <= 0:
        return 0.0
    return keys * caches / (ttl + 1.0 / lam_per_cache)


def main():
    a = parse_args()
    lam = a.pages_per_s * a.fragments / a.keys
    entry = a.fragment_bytes + 512  # kept headers, key and bookkeeping
    print(
        f"R={a.pages_per_s:g} pages/s, F={a.fragments:g}, U={a.keys:g} keys, T={a.ttl_s:g} s, "
        f"{a.fragment_bytes:g} B/fragment: each key asked {lam:.2f}/s over the cluster\n"
    )
    header = (
        "| nodes | nodes needed (CPU) | origin req/s, own caches | origin req/s, shared | "
        "origin per page, own / shared | Redis ops/s | Redis MB/s | L1 MB/node |"
    )
    print(header)
    print("|" + "---|" * 8)
    cpu_nodes = a.pages_per_s / (a.pages_per_core_s * a.cores * (1.0 - a.l2_overhead))
    for n in [int(x) for x in a.nodes.split(",") if x.strip()]:
        own = fetches_per_s(a.keys, a.ttl_s, lam / n, n)
        shared = fetches_per_s(a.keys, a.ttl_s, lam, 1)
        gets = own  # every L1 miss asks Redis once
        ops = gets + 3 * shared  # and each fill: the lease (SET NX), the value (SET), DEL
        mbps = (gets + shared) * entry / 1e6
        l1 = min(a.keys * entry / 1e6, a.l1_capacity_mb)
        print(
            f"| {n} | {cpu_nodes:.1f} | {own:.0f} | {shared:.0f} | "
            f"{own / a.pages_per_s:.3f} / {shared / a.pages_per_s:.3f} | {ops:.0f} | "
            f"{mbps:.1f} | {l1:.0f} |"
        )
    # Where each design stops scaling.
    limit_nodes = None
    for n in range(1, 10001):
        own = fetches_per_s(a.keys, a.ttl_s, lam / n, n)
        if own + 4 * fetches_per_s(a.keys, a.ttl_s, lam, 1) > a.redis_ops_s:
            limit_nodes = n
            break
    print()
    print(
        f"Own caches: origin load is about N*U/T while each node sees every key more than once "
        f"per TTL (N < lam*T = {lam * a.ttl_s:.0f}); past that nearly every fragment request "
        f"reaches the fragment services (R*F = {a.pages_per_s * a.fragments:.0f} req/s)."
    )
    if limit_nodes:
        print(
            f"Shared tier: one Redis at {a.redis_ops_s:g} ops/s saturates at about "
            f"{limit_nodes} nodes; past that, shard Redis (cluster) or lengthen T."
        )
    else:
        print(
            f"Shared tier: one Redis at {a.redis_ops_s:g} ops/s does not saturate up to "
            f"10000 nodes with these inputs."
        )


if __name__ == "__main__":
    main()
