"""The application layer: the paper's tasks, observations, fitting many samples, run folders, the CLI.

Modules (imports point down this list, and from here to the library):
`cli` (argument parsing, `dip-jax` and the experiment scripts) ->
`commands`, `batch`, `experiments` (one function per command) -> `checks`
(inputs and outputs checked before any work) -> `runs` (run folders,
figures, metrics.json, the report) -> `fitting` (same-shaped samples in one
`dj.fit` call) -> `task_table`, `tasks` (the tasks as data) ->
`measurements` (how each task observes an image, and its operator) ->
`observations` (loading, synthetic corruption, masks, `Sample`).
"""
