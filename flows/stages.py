"""Sweep stages as Prefect tasks: one task per stage of a run (never per question or
sample). I/O stages (quantize, deploy, the tool runs over SSH) retry after a dropped
connection or a timeout; anything else (a validation error, a failed tool) is terminal."""

from __future__ import annotations

from collections.abc import Callable

from prefect import Task
from prefect.cache_policies import NO_CACHE

from mqepi import is_transient

RETRIES = 2
RETRY_DELAY_S = 2


def _retry_io_only(task, task_run, state) -> bool:
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # noqa: BLE001 - the stage's own exception, inspected
            exc = raised
    return exc is not None and is_transient(exc)


class PrefectStages:
    """The ``Stages`` of :func:`mqepi.run_sweep`, each stage a Prefect task run."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, bool], Task] = {}

    def _task(self, name: str, fn: Callable, io: bool) -> Task:
        return Task(fn, name=name, cache_policy=NO_CACHE, persist_result=False,
                    retries=RETRIES if io else 0, retry_delay_seconds=RETRY_DELAY_S if io else 0,
                    retry_condition_fn=_retry_io_only if io else None)

    def run(self, name: str, fn: Callable, *args, io: bool = False, **kwargs):
        return self._task(name, fn, io)(*args, **kwargs)

    def submit(self, name: str, fn: Callable, *args, io: bool = False, **kwargs):
        return self._task(name, fn, io).submit(*args, **kwargs)

    def close(self) -> None:
        pass
