"""The chaos soak: a real ``trionet serve`` under hostile clients and faults, watched for leaks.

``python -m benchmarks.soak --minutes N`` (``make soak``) starts one server
process (or a supervisor and its workers) with a TLS, a plain and a PROXY
bind, drives well-behaved canary clients and a dozen kinds of abusive ones
from several loopback source addresses, injects faults (descriptor
exhaustion, a drain-and-restart or a worker reload), samples the server's
stats file, and checks invariants: no canary reply lost or corrupted,
counters that add up, descriptors and tasks back to their baseline, no
ERROR in the server's log.  See ``runner.py`` for the timeline and
``docs/source/howto/soak.rst`` for the guide.
"""
