"""authmw's benchmark suite (`make bench`, `make bench-smoke`): authmw against its peers, side by side.

Three parts, each interleaved round by round so that every ratio comes from one time window:

- in process (`benchmarks.inprocess`): the Starlette and Flask apps driven directly by a minimal ASGI / WSGI
  caller, so no server is measured;
- over HTTP (`benchmarks.overhttp`): uvicorn with one worker on loopback, loaded by `wrk` (or the in-repo
  bounded `benchmarks.loadgen` when wrk is missing);
- revocation propagation (`benchmarks.revocation`): a logout in one process, and how long until every other
  process (each with the Redis local cache) refuses the session or token.

Run ``python -m benchmarks --help`` from the repository root.
"""
