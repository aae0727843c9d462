"""How a fit runs, apart from what it computes.

`loop` (chunks of steps under `lax.scan`, host work between chunks, progress),
`compile` (XLA:CPU compiler options, `jit`), `signals` (SIGINT/SIGTERM),
`checkpoint`, `memory` (estimates and the up-front check), `batching` (the
batch axis: vmap, map, groups) and `sharding` (several devices). Nothing here
knows what a step does: `dip_jax.fit` builds the step and calls this layer.
"""
