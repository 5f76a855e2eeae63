"""The runs drill: one run survives two spot reclaims on three simulated instances (drill.py).

Asserts what happened, never how fast (`make bench-drill` measures).
"""

from __future__ import annotations

import pytest

from tests.node_agent import drill

pytestmark = pytest.mark.slow  # real agent and trainer processes, seconds each


@pytest.fixture(scope="module")
def reclaimed_twice(tmp_path_factory):
    # max_failures=1 and two reclaims: reclaims never count as failures.
    return drill.run_drill(tmp_path_factory.mktemp("drill"), steps=300, checkpoint_every=40, step_seconds=0.03,
                           max_failures=1)


def test_final_model_is_byte_identical_to_an_uninterrupted_run(reclaimed_twice):
    assert reclaimed_twice.final_state == reclaimed_twice.reference_state
    assert b'"step": 300' in reclaimed_twice.final_state


def test_run_shows_three_attempts_on_three_instances_and_succeeds(reclaimed_twice):
    run = reclaimed_twice.run
    assert run["state"] == "SUCCEEDED" and run["end_reason"] == "finished"
    assert [(a["attempt"], a["instance_id"], a["end_reason"]) for a in run["attempts"]] == [
        (1, drill.INSTANCE_IDS[0], "reclaimed"), (2, drill.INSTANCE_IDS[1], "reclaimed"),
        (3, drill.INSTANCE_IDS[2], "finished")]
    assert all(a["detail"] == "spot-imds" for a in run["attempts"][:2])
    assert run["attempt_count"] == 3 and run.get("failures", 0) == 0
    assert len(run["attempts"]) > run["spec"]["max_failures"]  # reclaimed more often than failures allowed
    assert run["last_checkpoint"] == f"s3://{drill.BUCKET}/{reclaimed_twice.final_prefix}"


def test_each_reclaim_loses_at_most_the_steps_since_the_last_completed_checkpoint(reclaimed_twice):
    attempts = reclaimed_twice.attempts
    assert [a.instance_id for a in attempts] == list(drill.INSTANCE_IDS)
    for old, new in zip(attempts, attempts[1:]):
        lost = old.last_step - new.resumed_from_step
        assert 0 <= lost <= old.last_step - old.last_checkpoint_step
        assert new.resumed_from_step == old.last_checkpoint_step  # resumed from the newest completed one
    assert attempts[0].resumed_from_step == 0 and attempts[-1].last_step == reclaimed_twice.steps


def test_each_lifecycle_action_is_completed_exactly_once_and_every_checkpoint_flow_succeeds(reclaimed_twice):
    assert reclaimed_twice.exit_codes == [{"watch": 0, "checkpoint": 0}] * 2
    for reclaim in reclaimed_twice.reclaims:
        [complete] = reclaimed_twice.completes(reclaim["token"])
        assert complete["params"]["LifecycleActionResult"] == "CONTINUE"
        assert complete["params"]["InstanceId"] == reclaim["instance_id"]
        logs = reclaimed_twice.logs[reclaim["instance_id"]]
        # One path led (signal, upload, release), the other followed: the trainer was signalled once.
        roles = sorted(drill.first(logs[name], "dedupe")["role"] for name in ("watch", "checkpoint"))
        assert roles == ["follower", "leader"]
        leader = next(logs[n] for n in ("watch", "checkpoint") if drill.first(logs[n], "dedupe")["role"] == "leader")
        steps = [line["step"] for line in leader]
        assert steps.count("signal") == 1
        assert steps.index("signal") < steps.index("latest") < steps.index("stop-trainer") < steps.index("release")


def test_the_job_finished_event_is_sent_once_and_no_alert(reclaimed_twice):
    [event] = reclaimed_twice.events
    assert event["detail"] == {"autoScalingGroupName": drill.GROUP, "runId": reclaimed_twice.run_id,
                               "state": "SUCCEEDED"}
    assert reclaimed_twice.alerts == []


def test_a_trainer_exiting_non_zero_is_retried_up_to_max_failures_then_failed_with_an_alert(tmp_path):
    result = drill.run_failure_drill(tmp_path, max_failures=2, exit_code=3)
    run = result.run
    assert (run["state"], run["end_reason"], run["failures"]) == ("FAILED", "max-failures", 2)
    assert [(a["end_reason"], a["exit_code"]) for a in run["attempts"]] == [("failed", 3), ("failed", 3)]
    [alert] = result.alerts
    assert alert["Subject"] == f"[ml-{drill.STAGE}] run {run['run_id']} FAILED"
    assert "max-failures" in alert["Message"]
    assert [e["detail"]["state"] for e in result.events] == ["FAILED"]


# ----------------------------------------------------------------------------- GPU faults and hung runs


@pytest.fixture(scope="module")
def xid_fault(tmp_path_factory):
    return drill.run_xid_drill(tmp_path_factory.mktemp("xid"), xid=79, steps=200, checkpoint_every=40,
                               step_seconds=0.02, fault_at=0.4)


def test_a_fatal_xid_moves_the_run_to_another_instance_and_it_ends_with_the_uninterrupted_model(xid_fault):
    assert xid_fault.final_state == xid_fault.reference_state
    run = xid_fault.run
    assert run["state"] == "SUCCEEDED" and run.get("failures", 0) == 0
    assert [(a["instance_id"], a["end_reason"], a.get("detail")) for a in run["attempts"]] == [
        (drill.INSTANCE_IDS[0], "reclaimed", "gpu-xid-79"), (drill.INSTANCE_IDS[1], "finished", None)]
    first_attempt, resumed = xid_fault.attempts
    assert resumed.resumed_from_step == first_attempt.last_checkpoint_step > 0  # the answer to the signal


def test_the_faulty_instance_is_marked_unhealthy_once_and_its_termination_follows_the_xid_checkpoint(xid_fault):
    [call] = xid_fault.health_calls
    assert (call["InstanceId"], call["HealthStatus"], call["ShouldRespectGracePeriod"]) == (
        drill.INSTANCE_IDS[0], "Unhealthy", "false")
    logs = xid_fault.logs[drill.INSTANCE_IDS[0]]
    assert drill.first(logs["run"], "dedupe")["role"] == "leader"
    assert drill.first(logs["checkpoint"], "dedupe")["role"] == "follower"
    [complete] = xid_fault.completes
    assert complete["params"]["InstanceId"] == drill.INSTANCE_IDS[0]
    assert [a["Subject"] for a in xid_fault.alerts] == [
        f"[ml-{drill.STAGE}] instance {drill.INSTANCE_IDS[0]} GPU fault Xid 79"]


def test_an_instance_failing_its_launch_gate_never_claims_the_run(tmp_path):
    result = drill.run_gate_drill(tmp_path)
    assert (result.run["state"], result.run["attempt_count"]) == ("PENDING", 0)
    [call] = result.health_calls
    assert (call["InstanceId"], call["HealthStatus"]) == (drill.INSTANCE_IDS[0], "Unhealthy")
    verdict = drill.first(result.run_log, "health-gate", healthy=False)
    assert verdict["problems"] == ["GPU 0 (00000000:00:1E.0): 3 uncorrected ECC errors since the driver loaded (max 0)"]
    assert drill.first(result.run_log, "claim", claimed=True) is None
    assert [a["Subject"] for a in result.alerts] == [
        f"[ml-{drill.STAGE}] instance {drill.INSTANCE_IDS[0]} failed the GPU health gate"]


def test_a_hung_trainer_is_detected_alerted_and_its_attempt_fails_as_hung(tmp_path):
    result = drill.run_hung_drill(tmp_path, hung_after_seconds=1.0, hang_at_step=30, max_failures=1)
    run = result.run
    assert (run["state"], run["end_reason"]) == ("FAILED", "max-failures")
    assert [(a["end_reason"], a.get("detail")) for a in run["attempts"]] == [("failed", "hung")]
    assert [a["Subject"] for a in result.alerts] == [f"[ml-{drill.STAGE}] run {run['run_id']} hung",
                                                     f"[ml-{drill.STAGE}] run {run['run_id']} FAILED"]
    assert len(result.last_progress_to_alert_s) == 1
