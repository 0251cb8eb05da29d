"""hashproxy: the cluster's one public entry point, pinning each image URL to one ypws cache node.

Layout (small modules, the HTTP-free core first):

    urls.py        request target -> normalised path, route and routing key (pure)
    health.py      per-node up/down and ready state, rejoin ramp-up (pure, clock injected)
    loads.py       in-flight and up per node, shared by the workers (one mmap): what bounded loads read
    tallies.py     requests/errors/retries/spills per node: per-worker ints pushed to prometheus in batches
    balancer.py    node choice: the ring (cluster/ring.py) + bounded loads, least-connections (pure)
    upstream.py    keep-alive connection pool to the nodes, response parsing
    headers.py     one pass over request headers: routing facts, what a node is sent (framing re-derived)
    responses.py   responses the proxy writes itself (JSON errors, /healthz)
    protocol.py    the client-facing asyncio protocol (httptools), pipelining, limits
    cycle.py       one proxied request: retries, streaming both ways, errors
    spool.py       request bodies bound for ypfs, taken whole (memory, then disk) before a node is chosen
    checker.py     active checks of each node's /readyz (live, ready)
    metrics.py     /metrics: prometheus-client multiprocess counters plus the shared gauges
    app.py         ProxyApp: what a worker shares between its connections, the router, timeouts
    server.py      one worker process: event loop, listening, graceful shutdown
    supervisor.py  the parent process: binds, forks the workers, restarts, stops
    haproxy.py     the same routing as an HAProxy 2.6 configuration (pure: config -> text)
    __main__.py    `python -m hashproxy serve | route URL | haproxy-config`
"""
