"""No orphan jobs, no leaked GPU slots: a flow process killed with -9, the Prefect server
restarted mid-job, a run cancelled through the API (served deployment), and the
reconciliation step, all against the session's real Prefect server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.states import Cancelling

from gpuflow.compute.local import LocalSubprocess
from gpuflow.core.errors import GpuCapacityError
from gpuflow.gpu import reconcile
from gpuflow.gpu.capacity import ensure_gpu_limits
from gpuflow.gpu.leases import LeaseLostError, acquire_gpu_slots, held_gpu_slots
from gpuflow.gpu.reconcile import ReconcileReport, reconcile_gpu_slots
from gpuflow.gpu.registry import JobRegistry, RunningJob
from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer, ensure_server, stop_server
from gpuflow.pipeline.stack import GpuflowStack
from tests.support.gpu_probe import gpu_probe, start_record
from tests.support.processes import running

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(327)]

REPOSITORY = Path(__file__).resolve().parents[2]
LEASE_S = 60


def _wait_until_dead(pid: int, timeout_s: float) -> float:
    started = time.monotonic()
    while running(pid):
        assert time.monotonic() - started < timeout_s, f"process {pid} still alive"
        time.sleep(0.05)
    return time.monotonic() - started


async def _active_slots(name: str) -> int:
    async with get_client() as client:
        return int((await client.read_global_concurrency_limit_by_name(name)).active_slots)


def _wait_for_slots(name: str, expected: int, timeout_s: float) -> float:
    started = time.monotonic()
    while asyncio.run(_active_slots(name)) != expected:
        assert time.monotonic() - started < timeout_s, f"{name} never reached {expected} slots"
        time.sleep(1.0)
    return time.monotonic() - started


def _saved_stack(
    layout: EmbeddedLayout, slots: int = 2, lease_s: int = LEASE_S
) -> tuple[GpuflowStack, str]:
    limit = f"gpu-crash-{uuid.uuid4().hex[:6]}"
    compute = LocalSubprocess(devices=list(range(slots)), lock_dir=layout.nas_root / limit)
    stack = layout.stack().model_copy(
        update={
            "gpu_limit": limit,
            "compute": compute,
            "gpu_lease_s": lease_s,
            "admission_ttl_s": 5,
        }
    )
    name = f"crash-{uuid.uuid4().hex[:6]}"
    asyncio.run(bootstrap(stack, name, gpu_slots=slots))
    return stack, name


@pytest.fixture
def flow_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _start_flow_process(
    server: LocalServer, stack_name: str, job: str, record_dir: Path
) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio\n"
        "from tests.support.gpu_probe import gpu_probe\n"
        f"asyncio.run(gpu_probe({stack_name!r}, {job!r}, 1, 600, {str(record_dir)!r}))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        env={**os.environ, "PREFECT_API_URL": server.api_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_kill_9_of_a_flow_process_stops_its_job_and_frees_its_slots(
    prefect_server: LocalServer,
    layout: EmbeddedLayout,
    tmp_path: Path,
    flow_processes: list[subprocess.Popen[bytes]],
) -> None:
    """One killed flow's slots come back by lease expiry; the other's are released at once
    by the reconciliation step."""
    expiring, expiring_name = _saved_stack(layout)
    repaired, repaired_name = _saved_stack(layout)
    flow_processes.append(_start_flow_process(prefect_server, expiring_name, "expiring", tmp_path))
    flow_processes.append(_start_flow_process(prefect_server, repaired_name, "repaired", tmp_path))
    jobs = [start_record(tmp_path, "expiring"), start_record(tmp_path, "repaired")]
    assert asyncio.run(_active_slots(expiring.gpu_limit)) == 1

    for process in flow_processes:
        process.kill()
        process.wait()
    killed_at = time.monotonic()
    for job in jobs:
        _wait_until_dead(job["pid"], timeout_s=30)  # the job guard's doing; 30 s: "never"

    report = asyncio.run(
        reconcile_gpu_slots([repaired.gpu_limit], repair=True, registry=repaired.job_registry)
    )
    assert [job.job_name for job in report.dead_jobs] == ["repaired"]
    assert len(report.released_leases) == 1 and report.consistent, report.summary()
    assert asyncio.run(_active_slots(repaired.gpu_limit)) == 0

    report = asyncio.run(
        reconcile_gpu_slots([expiring.gpu_limit], repair=False, registry=expiring.job_registry)
    )
    assert not report.consistent
    assert report.limits[0].active_slots == 1 and report.limits[0].accounted_slots == 0
    assert "dead holder: job expiring" in report.summary()

    _wait_for_slots(expiring.gpu_limit, 0, timeout_s=LEASE_S + 20 - (time.monotonic() - killed_at))
    # The stale record goes on repair; the admission entries expired with their holders.
    report = asyncio.run(
        reconcile_gpu_slots([expiring.gpu_limit], repair=True, registry=expiring.job_registry)
    )
    assert report.consistent, report.summary()
    assert expiring.job_registry.jobs() == ([], [])
    assert asyncio.run(expiring.admission_queue().entries()) == []


def test_a_prefect_server_restart_mid_job_leaks_no_slot(
    prefect_server: LocalServer, state_dir: Path, layout: EmbeddedLayout, tmp_path: Path
) -> None:
    # A lease longer than a restart takes on a loaded machine: the job keeps its slot.
    stack, stack_name = _saved_stack(layout, slots=1, lease_s=300)
    hold = tmp_path / "across-restart.hold"
    hold.touch()

    async def run_flow() -> Any:
        return await gpu_probe(
            stack_name, "across-restart", 1, 0.1, str(tmp_path), return_state=True
        )

    async def main() -> Any:
        flow = asyncio.create_task(run_flow())
        while not (tmp_path / "across-restart.start").exists():
            assert not flow.done(), flow
            await asyncio.sleep(0.1)
        await asyncio.to_thread(stop_server, state_dir)
        restarted, started = await asyncio.to_thread(ensure_server, state_dir, prefect_server.port)
        assert started and restarted.port == prefect_server.port
        # The lease survived the restart (filesystem lease storage): the slot is still held.
        assert await _active_slots(stack.gpu_limit) == 1
        hold.unlink()
        return await flow

    state = asyncio.run(main())
    assert state.is_completed(), state.message
    assert asyncio.run(_active_slots(stack.gpu_limit)) == 0


def test_cancelling_a_served_run_through_the_api_stops_its_job_and_frees_its_slots(
    prefect_server: LocalServer,
    layout: EmbeddedLayout,
    tmp_path: Path,
    flow_processes: list[subprocess.Popen[bytes]],
) -> None:
    stack, stack_name = _saved_stack(layout, slots=1)
    deployment = f"cancel-{uuid.uuid4().hex[:6]}"
    serve = (
        "from tests.support.gpu_probe import gpu_probe\n"
        f"gpu_probe.serve(name={deployment!r}, limit=2)\n"
    )
    flow_processes.append(
        subprocess.Popen(
            [sys.executable, "-c", serve],
            cwd=REPOSITORY,
            env={
                **os.environ,
                "PREFECT_API_URL": prefect_server.api_url,
                "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            },
        )
    )

    async def start_run() -> UUID:
        async with get_client() as client:
            deadline = time.monotonic() + 120
            while True:
                found = await client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
                )
                if found:
                    break
                assert time.monotonic() < deadline, "the served deployment never appeared"
                await asyncio.sleep(0.5)
            run = await client.create_flow_run_from_deployment(
                found[0].id,
                parameters={
                    "stack": stack_name,
                    "name": "cancelled",
                    "gpus": 1,
                    "seconds": 600,
                    "record_dir": str(tmp_path),
                },
            )
            return run.id

    async def cancel(run_id: UUID) -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelling())

    async def final_state(run_id: UUID) -> str:
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
        return str(run.state.type.value if run.state else None)

    run_id = asyncio.run(start_run())
    job = start_record(tmp_path, "cancelled", timeout_s=120)
    assert asyncio.run(_active_slots(stack.gpu_limit)) == 1
    asyncio.run(cancel(run_id))
    # The job would run 120 s: cancellation, not its timeout, ends it. 60 s means "never",
    # with room for a loaded machine; how fast is not the behaviour.
    _wait_until_dead(job["pid"], timeout_s=60)
    _wait_for_slots(stack.gpu_limit, 0, timeout_s=60)
    deadline = time.monotonic() + 30
    while asyncio.run(final_state(run_id)) != "CANCELLED":
        assert time.monotonic() < deadline, asyncio.run(final_state(run_id))
        time.sleep(0.5)


def test_a_lost_lease_stops_the_work_holding_it(prefect_server: LocalServer) -> None:
    """If the server no longer knows the lease (expired during a long outage), the job is
    stopped: its GPUs are no longer accounted for."""
    limit = f"gpu-lost-{uuid.uuid4().hex[:6]}"

    async def main() -> None:
        await ensure_gpu_limits({limit: 1})
        async with get_client() as client:
            with pytest.raises(LeaseLostError, match=limit):
                async with held_gpu_slots([limit], 1, LEASE_S, renew_every_s=0.3) as lease:
                    await client.release_concurrency_slots_with_lease(lease.lease_id)
                    await asyncio.Event().wait()  # work that never ends on its own

    # Only the lost lease can end the work; 120 s (400 renewals) means it never did.
    asyncio.run(asyncio.wait_for(main(), timeout=120))
    assert asyncio.run(_active_slots(limit)) == 0


def test_a_missing_limit_is_refused_naming_it(prefect_server: LocalServer) -> None:
    missing = f"gpu-missing-{uuid.uuid4().hex[:6]}"

    async def main() -> None:
        async with held_gpu_slots([missing], 1, LEASE_S):
            pytest.fail("slots granted on a limit that does not exist")

    with pytest.raises(GpuCapacityError, match=missing):
        asyncio.run(main())


def test_the_reconcile_command_reports_a_consistent_limit(
    prefect_server: LocalServer, stack_name: str, gpu_limit_name: str
) -> None:
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("gpuflow")), "reconcile", "--stack", stack_name],
        env={**os.environ, "PREFECT_API_URL": prefect_server.api_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert f"{gpu_limit_name}: 0/2 slots active, 0 held by live jobs" in completed.stdout


def test_a_record_from_another_host_that_stopped_refreshing_is_dead(
    prefect_server: LocalServer, tmp_path: Path
) -> None:
    """After a kill -9 on another host its flow run still says Running; the record, no
    longer refreshed, tells reconciliation that the holder is gone."""
    limit = f"gpu-remote-{uuid.uuid4().hex[:6]}"
    registry = JobRegistry(tmp_path / "gpu-jobs")

    async def main() -> tuple[ReconcileReport, ReconcileReport, int]:
        await ensure_gpu_limits({limit: 2})
        leases = [await acquire_gpu_slots([limit], 1, LEASE_S, None) for _ in range(2)]
        for lease, age_s in zip(leases, (LEASE_S * 3, 1), strict=True):
            job = RunningJob.here(str(lease.lease_id), [limit], 1, "i2v", None, LEASE_S)
            registry.record(job.model_copy(update={"host": "gpu-node-7", "pid": 1}))
            seen = time.time() - age_s
            os.utime(registry.root / f"{lease.lease_id}.json", (seen, seen))
        looked = await reconcile_gpu_slots([limit], repair=False, registry=registry)
        repaired = await reconcile_gpu_slots([limit], repair=True, registry=registry)
        return looked, repaired, await _active_slots(limit)

    looked, repaired, active = asyncio.run(main())
    assert [job.host for job in looked.live_jobs] == ["gpu-node-7"]
    assert len(looked.dead_jobs) == 1 and not looked.consistent
    assert repaired.released_leases == [looked.dead_jobs[0].lease_id]
    assert active == 1 and [job.lease_id for job in registry.jobs()[0]] == [
        looked.live_jobs[0].lease_id
    ]


def test_a_lease_handed_on_while_reconciling_is_not_released(
    prefect_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished holder hands its lease to the next job, which records itself under the
    same lease id: a reconciliation that judged the first holder dead just before must
    leave the lease and the new record alone."""
    limit = f"gpu-handed-{uuid.uuid4().hex[:6]}"
    registry = JobRegistry(tmp_path / "gpu-jobs")
    judged = reconcile._job_alive

    async def main() -> tuple[ReconcileReport, int, RunningJob | None]:
        await ensure_gpu_limits({limit: 1})
        lease = await acquire_gpu_slots([limit], 1, LEASE_S, None)
        first = RunningJob.here(str(lease.lease_id), [limit], 1, "i2v", None, LEASE_S)
        registry.record(first.model_copy(update={"host": "gpu-node-7", "pid": 1}))
        seen = time.time() - LEASE_S * 3
        os.utime(registry.root / f"{lease.lease_id}.json", (seen, seen))

        async def handed_on_after_judging(job: RunningJob, registry: JobRegistry) -> bool:
            alive = await judged(job, registry)
            registry.record(first.model_copy(update={"job_name": "next-i2v"}))
            return alive

        monkeypatch.setattr(reconcile, "_job_alive", handed_on_after_judging)
        report = await reconcile_gpu_slots([limit], repair=True, registry=registry)
        return report, await _active_slots(limit), registry.current(str(lease.lease_id))

    report, active, record = asyncio.run(main())
    assert report.released_leases == [] and report.dead_jobs == []
    assert active == 1
    assert record is not None and record.job_name == "next-i2v"
