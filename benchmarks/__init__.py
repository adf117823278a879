"""Benchmarks for kvs: every backend against what a user would write by hand.

Run with ``make bench`` (``python -m benchmarks``) or ``make bench-quick``
(``python -m benchmarks --quick``).  The run starts its own ``redis-server``,
``memcached`` and a 3-member etcd cluster on free loopback ports in temporary
directories (etcd's data under /dev/shm), measures kvs and its baselines
interleaved in the same process, checks each ratio against the targets of
the Redis and memcached issues (and kvs.etcd's own), and writes
``benchmarks/results/latest.json``, ``latest.md`` and PNG plots.

Modules, one job each:

``servers``     start and stop the benchmark's own servers
``backends``    how each backend is configured: kvs store, raw client, dogpile region
``baselines``   the raw-client and plain-dogpile subjects (the comparisons)
``etcd_servers``  the etcd cluster of a run (the tests' EtcdCluster)
``etcd_baselines``  etcd's raw subject: etcd3gw with its Lock
``subjects``    the subject interface and the kvs subject (the thing measured)
``timing``      rounds, medians, percentiles
``suites``      the per-operation micro-benchmarks
``contention``  many workers updating one key: updates/s and lease hand-off latency
``scaling``     cost against store size and value size, throughput against workers
``targets``     the performance targets of the issues
``report``      ratios, met/MISSED checks, the terminal table, JSON and markdown
``plots``       matplotlib PNGs
"""
