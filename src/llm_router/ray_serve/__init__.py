"""Serving on a Ray cluster (`llm-router serve --ray`, `llm-router ray deploy`; the `ray`
extra): the router as Ray Serve's HTTP ingress and the local models on model replicas that
multiplex them (a replica keeps an LRU of loaded models; a request goes to one that has its
model). Ray is imported only inside this package, and only when it is used.

- `deploy`: the Serve application from the settings, onto a cluster.
- `ingress`: the router replica (the single-machine app, its models on the deployment).
- `handle`: the ingress's end of a model: a Worker whose process is the model deployment.
- `replica`: a model replica (a ModelManager of its own, multiplexed by Serve).
- `directory`: which replica holds which model on which node, for GET /models.
- `wire`: the messages between them, and each side's settings."""

from __future__ import annotations

__all__: list[str] = []
