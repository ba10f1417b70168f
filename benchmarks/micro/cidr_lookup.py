"""What a CIDR check costs per connection: ``AccessPolicy`` allow/deny and ``trusted_proxies``.

Both are :class:`trionet.AccessPolicy` lookups, made once per accepted
connection in the accept task (``trusted_proxies`` before any stage, the
access policy at accept or after the PROXY header).  Up to 16 networks a
list is scanned in turn; a longer one is looked up by prefix length (one set
lookup per distinct prefix length).  Prints microseconds per check for a
short list and for 10,000 networks, for an address that matches the last
network and for one that matches none.  No sockets, no event loop.  Run it
pinned to one core (``taskset -c 0``) on a quiet machine.
"""

from __future__ import annotations

import time

from trionet import AccessPolicy, TCPAddress

N = 200_000


def per_check(policy: AccessPolicy, peer: TCPAddress, n: int = N) -> float:
    allows = policy.allows
    start = time.perf_counter()
    for _ in range(n):
        allows(peer)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    short = AccessPolicy(allow=["10.0.0.0/8", "192.168.0.0/16", "127.0.0.0/8"])
    long_list = [f"10.{i // 256}.{i % 256}.0/24" for i in range(10_000)] + ["127.0.0.0/8"]
    long = AccessPolicy(allow=long_list)
    for name, policy in (("3 networks", short), ("10,001 networks", long)):
        for label, host in (("last matches", "127.0.0.1"), ("none matches", "192.0.2.1")):
            best = min(per_check(policy, TCPAddress(host, 40000)) for _ in range(3))
            print(f"{name:>16}, {label}: {best:6.2f} us per check")


if __name__ == "__main__":
    main()
