"""Former home of the task table, now `dip_jax.app.tasks` (kept for benchmarks/device_check.py)."""

from dip_jax.app.tasks import TASKS, TaskConfig, task

__all__ = ["TASKS", "TaskConfig", "task"]
