"""Tools around the server: ``cli.py`` (the ``cascade`` command), ``build.py`` (Serve YAML, cluster
launcher, KubeRay), ``planner.py`` and ``probe.py`` (capacity planning), ``loadgen.py`` (the one load
generator, gRPC and OpenAI HTTP: the probe, the benchmarks and the tests use it), ``bench.py`` (``cascade bench``:
the load generator from the command line, side by side with a peer), ``local.py`` (``cascade serve`` as a local
subprocess, for the probe, benchmarks and tests), ``tls.py`` (the nginx TLS front), ``client.py``
(a small gRPC client).

May import anything in ``serving``; the request path never imports ``ops``.
"""
