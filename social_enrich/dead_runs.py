"""Runs whose worker process died: found, marked failed and their pool slots freed before a run claims one.

A run killed outright (SIGKILL, the OOM killer) keeps its status STARTED and its slot of the
``azure_openai`` pool, so with the pool's limit of 1 every later run waits for it forever. The
daemon's run monitoring cures that in production (deploy/dagster.yaml); the embedded default and
``dagster asset materialize`` have no daemon. So every run records where its worker runs, and looks
for dead runs before it claims a slot: a run whose worker ran on this machine and is gone is dead.
A run of another machine, or one without a record, is never judged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

_PROC = Path("/proc")
# Engine event metadata of the record each run writes when its executor starts.
PID, MACHINE, STARTED = "run_worker/pid", "run_worker/machine", "run_worker/started"


@dataclass(frozen=True)
class RunWorker:
    pid: int
    machine: str
    started: str  # the process's start time where the system tells it ("" elsewhere): a reused pid is another process


def this_machine() -> str:
    """This host and, on Linux, its PID namespace: two containers may share a hostname but not their pids."""
    try:
        return f"{socket.gethostname()} (pid namespace {os.readlink('/proc/self/ns/pid').strip('pid:[]')})"
    except OSError:
        return socket.gethostname()


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state first, start time 20th); None when no such process."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def worker_of(pid: int) -> RunWorker:
    """The process ``pid`` of this machine, as a run records its worker."""
    stat = _stat(pid) if _PROC.is_dir() else None
    return RunWorker(pid, this_machine(), stat[19] if stat else "")


def is_alive(worker: RunWorker) -> bool:
    """Whether the worker's process still runs here: not gone, not a zombie, not a newer process with its pid."""
    if _PROC.is_dir():
        stat = _stat(worker.pid)
        return stat is not None and stat[0] != "Z" and (not worker.started or stat[19] == worker.started)
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _engine_event_data(metadata: Mapping[str, str]):  # -> EngineEventData
    # Dagster has no public way to give an engine event metadata; this is its only private use here.
    from dagster._core.events import EngineEventData

    return EngineEventData(metadata={k: dg.MetadataValue.text(v) for k, v in metadata.items()})


def worker_record(worker: RunWorker):  # -> EngineEventData
    """The metadata of the engine event by which a run records its worker."""
    return _engine_event_data({PID: str(worker.pid), MACHINE: worker.machine, STARTED: worker.started})


def recorded_worker(instance: dg.DagsterInstance, run_id: str) -> RunWorker | None:
    """The run's worker as its executor recorded it (the latest record: a resumed run records anew)."""
    worker = None
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        metadata = data.metadata if data else {}
        if PID in metadata and MACHINE in metadata:
            started = metadata.get(STARTED)
            worker = RunWorker(int(metadata[PID].value), str(metadata[MACHINE].value), str(started.value) if started else "")
    return worker


def mark_dead(instance: dg.DagsterInstance, run: dg.DagsterRun, worker: RunWorker, found_by: str | None) -> None:
    """Fail the run, saying why, and free its pool slots."""
    by = f", found by run {found_by}" if found_by else ""
    instance.report_run_failed(run, f"Run {run.run_id} marked failed: its run worker, pid {worker.pid} on {worker.machine}, "
                                    f"is gone (killed or crashed){by}. Its pool slots are freed.")
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def sweep_dead_runs(instance: dg.DagsterInstance, current_run_id: str | None = None) -> list[str]:
    """Mark failed every STARTED run whose worker ran on this machine and is gone, free its slots; their ids."""
    machine, dead = this_machine(), []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if run.run_id == current_run_id:
            continue
        worker = recorded_worker(instance, run.run_id)
        if worker is None or worker.machine != machine or is_alive(worker):
            continue
        latest = instance.get_run_by_id(run.run_id)  # another run may have marked it meanwhile
        if latest is not None and latest.status == dg.DagsterRunStatus.STARTED:
            mark_dead(instance, latest, worker, current_run_id)
            dead.append(run.run_id)
    return dead


def _waits_for_pool(event: dg.DagsterEvent) -> bool:
    """Whether the event is Dagster's "Step blocked by limit for pool" (again every 5 minutes while it waits)."""
    data = event.engine_event_data if event.is_engine_event else None
    return data is not None and "pool" in data.metadata


class SweepingExecutor(dg.Executor):
    """Dagster's executor, after recording this run's worker and sweeping dead runs: before any slot is
    claimed, and again whenever a step waits for a pool (a run holding it may have died meanwhile)."""

    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    @property
    def retries(self):  # -> RetryMode
        return self._inner.retries

    @property
    def step_dependency_config(self):  # -> StepDependencyConfig
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:  # types not exported by dagster
        worker = worker_of(os.getpid())
        yield dg.DagsterEvent.engine_event(
            plan_context,
            f"Run worker: pid {worker.pid} on {worker.machine}. Should this process die, the next run on this "
            "machine marks this run failed and frees its pool slots.",
            worker_record(worker),
        )
        yield from self._sweep(plan_context)
        for event in self._inner.execute(plan_context, execution_plan):
            yield event
            if _waits_for_pool(event):
                yield from self._sweep(plan_context)

    def _sweep(self, plan_context) -> Iterator[dg.DagsterEvent]:
        try:
            dead = sweep_dead_runs(plan_context.instance, plan_context.run_id)
        except Exception as e:  # looking for dead runs must never fail a live one
            plan_context.log.warning(f"run {plan_context.run_id}: could not look for dead runs: {type(e).__name__}: {e}")
            return
        for run_id in dead:
            yield dg.DagsterEvent.engine_event(
                plan_context,
                f"Marked run {run_id} failed: its run worker on this machine is gone. Its pool slots are freed.",
                _engine_event_data({}),
            )


@dg.executor(
    name="multi_or_in_process_freeing_dead_runs",
    config_schema=dg.multi_or_in_process_executor.config_schema,
    requirements=dg.multi_or_in_process_executor.get_requirements,
)
def executor_freeing_dead_runs(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's default executor (multiprocess, or in_process by run config), sweeping dead runs first."""
    create = dg.multi_or_in_process_executor.executor_creation_fn
    assert create is not None
    return SweepingExecutor(create(init_context))
