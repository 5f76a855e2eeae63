"""The node agent's run side: the runs table (claim, renew, end), the run loop and the trainer launchers.

Against moto in-process (DynamoDB, S3, SNS, EventBridge); trainers are real
local processes (the process launcher) so exits, signals and stops are real.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tests.node_agent.helpers import (
    BUCKET, GROUP, INSTANCE, OTHER_INSTANCE, RUN_ID, Cloud, Runner, StaticImds, make_config)


@pytest.fixture
def cloud(aws_env):
    with mock_aws():
        yield Cloud()


def table(agent, cloud, instance=INSTANCE, lease_seconds=90):
    return agent.RunsTable(cloud.dynamodb, "runs-table", instance, lease_seconds)


def make_loop(agent, tmp_path, logs, cloud, *, stop=lambda: False, **env):
    settings = {"ML_TRAINER_LAUNCHER": "process", "ML_LEASE_SECONDS": "5", "ML_LEASE_RENEW_SECONDS": "0.2",
                "ML_CLAIM_POLL_SECONDS": "0.05", "ML_GPU_COUNT": "1", "ML_HEALTH_GATE": "off",
                "ML_KERNEL_LOG": "off", "ML_PROGRESS_DIR": str(tmp_path / "progress"), **env}
    config = make_config(agent, tmp_path, **settings)
    return agent.RunLoop(config, imds=StaticImds(), s3=cloud.s3, dynamodb=cloud.dynamodb, sns=cloud.sns,
                         events=cloud.events, launcher=agent.ProcessLauncher(tmp_path / "trainer-logs"),
                         log=agent.JsonLog(logs.stream), stop=stop, monitor_poll_seconds=0.05,
                         upload_poll_seconds=0.1)


def python(code: str) -> list:
    return [sys.executable, "-c", code]


def in_thread(fn):
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def wait_for(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- the runs table


def test_claim_takes_the_oldest_pending_run_and_appends_its_attempt(agent, cloud):
    cloud.put_run("newer-00000002", created_at="2026-11-29T10:00:02Z")
    cloud.put_run("older-00000001", created_at="2026-11-29T10:00:01Z")
    runs = table(agent, cloud)
    seen = next(runs.candidates())
    assert seen["run_id"] == "older-00000001"
    item = runs.claim(seen)
    assert item["state"] == "RUNNING" and item["lease_holder"] == INSTANCE
    assert item["attempt_count"] == 1 and item["attempts"][0]["instance_id"] == INSTANCE
    assert item["lease_expires_at"] >= int(time.time()) + 80
    assert item["started_at"] == item["attempts"][0]["started_at"]


def test_claim_of_a_run_another_instance_took_first_returns_none(agent, cloud):
    cloud.put_run()
    seen = next(table(agent, cloud).candidates())
    assert table(agent, cloud, OTHER_INSTANCE).claim(seen) is not None
    assert table(agent, cloud).claim(seen) is None
    assert cloud.run()["lease_holder"] == OTHER_INSTANCE


def test_a_run_whose_holder_vanished_is_claimed_once_its_lease_expired(agent, cloud):
    cloud.hold_run(holder=OTHER_INSTANCE, lease_expires_at=time.time() - 1)
    runs = table(agent, cloud)
    [seen] = list(runs.candidates())
    item = runs.claim(seen)
    assert [(a["instance_id"], a.get("end_reason"), a.get("detail")) for a in item["attempts"]] == [
        (OTHER_INSTANCE, "reclaimed", "lease-expired"), (INSTANCE, None, None)]
    assert item["attempt_count"] == 2 and item["started_at"] == "2026-11-29T10:00:00Z"  # first attempt's start


def test_a_run_whose_holder_still_renews_is_not_claimable(agent, cloud):
    cloud.hold_run(holder=OTHER_INSTANCE)
    assert list(table(agent, cloud).candidates()) == []


def test_renew_extends_the_lease_and_reads_back_the_cancel_request(agent, cloud):
    cloud.hold_run(lease_expires_at=time.time() + 5, cancel_requested=True)
    item = table(agent, cloud).renew(RUN_ID, 1)
    assert item["lease_expires_at"] >= int(time.time()) + 80 and item["cancel_requested"] is True


def test_renew_of_a_run_held_by_another_instance_is_lease_lost(agent, cloud):
    cloud.hold_run(holder=OTHER_INSTANCE)
    with pytest.raises(agent.LeaseLost):
        table(agent, cloud).renew(RUN_ID, 1)


# ----------------------------------------------------------------------------- the run loop


def test_a_claimed_run_gets_the_contract_environment_and_succeeds_with_its_final_checkpoint(
        agent, cloud, tmp_path, logs):
    env_dump = tmp_path / "env.json"
    code = ("import json, os, pathlib\n"
            "d = pathlib.Path(os.environ['ML_CHECKPOINT_DIR'])\n"
            "(d / 'model.bin').write_bytes(b'final')\n"
            "(d / os.environ['ML_CHECKPOINT_DONE_MARKER']).write_text('done')\n"
            f"json.dump({{k: v for k, v in os.environ.items() if k.startswith('ML_') or k == 'LR'}}, "
            f"open({str(env_dump)!r}, 'w'))\n")
    cloud.put_run(command=python(code))
    cloud.table.update_item(Key={"run_id": RUN_ID}, UpdateExpression="SET spec.environment = :e",
                            ExpressionAttributeValues={":e": {"LR": "0.001"}})
    loop = make_loop(agent, tmp_path, logs, cloud)
    assert loop.serve(max_runs=1) == 0
    env = json.loads(env_dump.read_text())
    assert {k: env[k] for k in ("ML_RUN_ID", "ML_CHECKPOINT_DIR", "ML_RESUME_FROM", "ML_CHECKPOINT_DONE_MARKER",
                                "LR")} == {"ML_RUN_ID": RUN_ID, "ML_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
                                           "ML_RESUME_FROM": "", "ML_CHECKPOINT_DONE_MARKER": "CHECKPOINT_DONE",
                                           "LR": "0.001"}
    run = cloud.run()
    assert (run["state"], run["end_reason"], "lease_holder" in run) == ("SUCCEEDED", "finished", False)
    assert run["attempts"][0]["end_reason"] == "finished" and run["attempts"][0]["exit_code"] == 0
    prefix = run["last_checkpoint"].removeprefix(f"s3://{BUCKET}/")
    assert cloud.objects(prefix)[prefix + "model.bin"] == b"final"
    assert cloud.objects(f"runs/{RUN_ID}/LATEST")[f"runs/{RUN_ID}/LATEST"] == prefix.encode()
    [event] = cloud.finished_events()
    assert (event["source"], event["detail-type"]) == ("ml.training", "Training Job Finished")
    assert event["detail"] == {"autoScalingGroupName": GROUP, "runId": RUN_ID, "state": "SUCCEEDED"}
    assert cloud.alerts() == []


def test_a_failing_trainer_is_retried_from_its_last_checkpoint_then_failed_with_an_alert(
        agent, cloud, tmp_path, logs):
    seen = tmp_path / "resumed-from.txt"
    code = ("import os, pathlib, sys\n"
            "d = pathlib.Path(os.environ['ML_CHECKPOINT_DIR'])\n"
            f"open({str(seen)!r}, 'a').write(os.environ['ML_RESUME_FROM'] + '|' + "
            "((d / 'step').read_text() if (d / 'step').exists() else '') + '\\n')\n"
            "(d / 'step').write_text('40')\n"
            "(d / os.environ['ML_CHECKPOINT_DONE_MARKER']).write_text('40')\n"
            "sys.exit(3)\n")
    cloud.put_run(command=python(code), max_failures=2)
    loop = make_loop(agent, tmp_path, logs, cloud)
    loop.serve(max_runs=2)
    first, second = seen.read_text().splitlines()
    assert first == "|"
    assert second.startswith(f"s3://{BUCKET}/runs/{RUN_ID}/") and second.endswith("/|40")
    run = cloud.run()
    assert (run["state"], run["end_reason"], run["failures"]) == ("FAILED", "max-failures", 2)
    assert [(a["end_reason"], a["exit_code"]) for a in run["attempts"]] == [("failed", 3), ("failed", 3)]
    [alert] = cloud.alerts()
    assert alert["Subject"] == f"[ml-dev] run {RUN_ID} FAILED"
    assert "max-failures" in alert["Message"] and run["last_checkpoint"] in alert["Message"]
    assert [e["detail"]["state"] for e in cloud.finished_events()] == ["FAILED"]


def test_a_failure_below_max_failures_puts_the_run_back_to_pending(agent, cloud, tmp_path, logs):
    cloud.put_run(command=python("import sys; sys.exit(1)"), max_failures=3)
    make_loop(agent, tmp_path, logs, cloud).serve(max_runs=1)
    run = cloud.run()
    assert (run["state"], run["failures"], "lease_holder" in run) == ("PENDING", 1, False)
    assert cloud.alerts() == [] and cloud.finished_events() == []


def test_a_trainer_that_cannot_start_counts_as_a_failure(agent, cloud, tmp_path, logs):
    cloud.put_run(command=[str(tmp_path / "no-such-trainer")], max_failures=1)
    make_loop(agent, tmp_path, logs, cloud).serve(max_runs=1)
    run = cloud.run()
    assert (run["state"], run["attempts"][0]["exit_code"]) == ("FAILED", 125)


def test_a_cancel_request_stops_the_trainer_within_a_renewal_and_cancels_the_run(agent, cloud, tmp_path, logs):
    cloud.put_run(command=python("import time; time.sleep(600)"))
    loop = make_loop(agent, tmp_path, logs, cloud)
    thread = in_thread(lambda: loop.serve(max_runs=1))
    wait_for(lambda: loop.state.current_run().get("phase") == "running", "the trainer to start")
    cloud.table.update_item(Key={"run_id": RUN_ID}, UpdateExpression="SET cancel_requested = :t",
                            ExpressionAttributeValues={":t": True})
    thread.join(60)
    run = cloud.run()
    assert (run["state"], run["end_reason"], run["attempts"][0]["end_reason"]) == ("CANCELLED", "cancelled",
                                                                                  "cancelled")
    assert logs.steps("stop-trainer")


def test_a_run_past_its_maximum_duration_is_stopped_and_failed(agent, cloud, tmp_path, logs):
    cloud.put_run(command=python("import time; time.sleep(600)"), started_at="2026-01-01T00:00:00Z")
    loop = make_loop(agent, tmp_path, logs, cloud)
    loop.serve(max_runs=1)
    run = cloud.run()
    assert (run["state"], run["end_reason"]) == ("FAILED", "max-duration")
    assert run["attempts"][0]["detail"] == "max-duration"
    assert "max-duration" in cloud.alerts()[0]["Message"]


def test_a_lost_lease_stops_the_trainer_and_writes_nothing(agent, cloud, tmp_path, logs):
    cloud.put_run(command=python("import time; time.sleep(600)"))
    loop = make_loop(agent, tmp_path, logs, cloud)
    thread = in_thread(lambda: loop.serve(max_runs=1))
    wait_for(lambda: loop.state.current_run().get("phase") == "running", "the trainer to start")
    pid = loop.state.current_run()["pid"]
    cloud.table.update_item(Key={"run_id": RUN_ID}, UpdateExpression="SET lease_holder = :o",
                            ExpressionAttributeValues={":o": OTHER_INSTANCE})
    before = cloud.run()
    thread.join(60)
    assert cloud.run() == before
    assert logs.steps("lease-lost") and not agent._pid_alive(pid)


def test_a_trainer_exit_during_an_interruption_is_a_reclaim_never_a_failure(agent, cloud, tmp_path, logs):
    # The trainer answers the signal by exiting 1 right away, without a checkpoint.
    cloud.put_run(command=python("import signal, sys, time\n"
                                 "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(1))\n"
                                 "time.sleep(600)"), max_failures=1)
    loop = make_loop(agent, tmp_path, logs, cloud)
    thread = in_thread(lambda: loop.serve(max_runs=1))
    wait_for(lambda: loop.state.current_run().get("phase") == "running", "the trainer to start")
    checkpoint = agent.Agent(loop.config, imds=StaticImds(), s3=cloud.s3, autoscaling=None, dynamodb=cloud.dynamodb,
                             sns=cloud.sns, events=cloud.events, log=agent.JsonLog(logs.stream))
    checkpoint.config = make_config(agent, tmp_path, ML_TRAINER_LAUNCHER="process", ML_CHECKPOINT_BUDGET_SECONDS="2")
    checkpoint.checkpoint("spot-interruption", "evt-1")
    thread.join(60)
    run = cloud.run()
    assert (run["state"], run.get("failures", 0)) == ("PENDING", 0)
    assert run["attempts"][0]["end_reason"] == "reclaimed"
    assert any(line.get("interrupted") for line in logs.steps("trainer-exit"))


def test_a_draining_instance_claims_nothing(agent, cloud, tmp_path, logs):
    cloud.put_run()
    polls = []
    loop = make_loop(agent, tmp_path, logs, cloud, stop=lambda: len(polls) > 3)
    loop.state.start_draining("spot-imds", "e", time.time())
    loop._sleep = lambda s: polls.append(s)
    loop.serve()
    assert cloud.run()["state"] == "PENDING"


def test_a_run_needing_more_gpus_than_the_instance_has_is_left_for_another(agent, cloud, tmp_path, logs):
    cloud.put_run()
    cloud.table.update_item(Key={"run_id": RUN_ID}, UpdateExpression="SET spec.gpus = :g",
                            ExpressionAttributeValues={":g": 8})
    polls = []
    loop = make_loop(agent, tmp_path, logs, cloud, stop=lambda: len(polls) > 2, ML_GPU_COUNT="4")
    loop._sleep = lambda s: polls.append(s)
    loop.serve()
    assert cloud.run()["state"] == "PENDING"
    assert logs.steps("claim")[0]["gpus_needed"] == 8


def test_after_an_agent_restart_a_run_whose_trainer_died_is_given_back(agent, cloud, tmp_path, logs):
    cloud.hold_run()
    loop = make_loop(agent, tmp_path, logs, cloud)
    loop.state.set_current_run({"run_id": RUN_ID, "attempt": 1, "phase": "running", "instance_id": INSTANCE,
                                "launcher": "process", "pid": 2 ** 22 + 7})
    loop.serve(max_runs=0)
    run = cloud.run()
    assert (run["state"], run["attempts"][0]["detail"], run.get("failures", 0)) == ("PENDING", "agent-restarted", 0)
    assert loop.state.current_run() == {}


def test_gpu_count_reads_nvidia_smi(agent, tmp_path):
    config = make_config(agent, tmp_path)
    smi = "GPU 0: NVIDIA A10G (UUID: GPU-1)\nGPU 1: NVIDIA A10G (UUID: GPU-2)\n"
    assert agent.gpu_count(config, run=lambda cmd, **kw: type("R", (), {"returncode": 0, "stdout": smi})()) == 2
    assert agent.gpu_count(config, run=lambda cmd, **kw: (_ for _ in ()).throw(FileNotFoundError())) == 0
    assert agent.gpu_count(make_config(agent, tmp_path, ML_GPU_COUNT="8")) == 8


# ----------------------------------------------------------------------------- docker launcher


def docker_launcher(agent, tmp_path, runner, ecr=None):
    config = make_config(agent, tmp_path)
    return agent.DockerLauncher(config, lambda region: ecr, run=runner), config


def test_docker_run_uses_all_gpus_the_run_log_stream_the_checkpoint_mount_and_env_by_name(agent, tmp_path):
    launcher, config = docker_launcher(agent, tmp_path, Runner())
    spec = {"image": "ghcr.io/acme/trainer:1.2", "command": ["python", "train.py"], "args": ["--epochs", "3"]}
    argv = launcher.command(RUN_ID, 2, INSTANCE, spec, {"ML_RUN_ID": RUN_ID, "HF_TOKEN": "secret"})
    assert argv[:2] == ["docker", "run"]
    joined = " ".join(argv)
    assert "--gpus all" in joined and f"--name ml-run-{RUN_ID}-2" in joined
    assert "--log-driver awslogs" in joined and "--log-opt awslogs-group=/ml/dev/runs" in joined
    assert f"--log-opt awslogs-stream={RUN_ID}/2-{INSTANCE}" in joined
    assert "--log-opt awslogs-region=us-east-1" in joined
    assert f"--volume {config.checkpoint_dir}:{config.checkpoint_dir}" in joined
    assert "--env HF_TOKEN" in joined and "secret" not in joined  # values never on the command line
    assert argv[-6:] == ["--entrypoint", "python", "ghcr.io/acme/trainer:1.2", "train.py", "--epochs", "3"]


def test_an_ecr_image_is_pulled_after_a_login_with_the_token_on_stdin(agent, tmp_path, logs, aws_env):
    ecr = boto3.client("ecr", region_name="eu-west-1")
    runner = Runner()
    launcher, _ = docker_launcher(agent, tmp_path, runner, ecr)
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ml-dev-trainer:7"
    token = base64.b64encode(b"AWS:pa55word").decode()
    with Stubber(ecr) as stub:
        stub.add_response("get_authorization_token", {"authorizationData": [{
            "authorizationToken": token, "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "expiresAt": "2026-11-30T00:00:00Z"}]}, {"registryIds": ["123456789012"]})
        calls = []
        launcher._run = lambda cmd, **kw: (calls.append((cmd, kw.get("input"))), runner(cmd, **kw))[1]
        launcher.prepare({"image": image}, agent.JsonLog(logs.stream))
    assert calls[0] == (["docker", "login", "--username", "AWS", "--password-stdin",
                         "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"], "pa55word")
    assert calls[1][0] == ["docker", "pull", image]


def test_an_image_outside_ecr_is_pulled_without_a_login(agent, tmp_path, logs):
    runner = Runner()
    launcher, _ = docker_launcher(agent, tmp_path, runner)
    launcher.prepare({"image": "public.ecr.aws/docker/library/python:3.12"}, agent.JsonLog(logs.stream))
    assert [c[:2] for c in runner.commands] == [["docker", "pull"]]


def test_a_docker_run_that_fails_is_a_launch_error(agent, tmp_path, logs):
    launcher, _ = docker_launcher(agent, tmp_path, Runner(returncode=125, stderr="no such image"))
    with pytest.raises(agent.LaunchError, match="no such image"):
        launcher.start(RUN_ID, 1, INSTANCE, {"image": "x:1"}, {}, agent.JsonLog(logs.stream))


def test_a_stopping_run_loop_leaves_its_trainer_and_lease_for_the_restarted_loop(agent, cloud, tmp_path, logs):
    import os
    import signal

    cloud.put_run(command=python("import time; time.sleep(600)"))
    stopping = threading.Event()
    loop = make_loop(agent, tmp_path, logs, cloud, stop=stopping.is_set)
    thread = in_thread(lambda: loop.serve(max_runs=1))
    wait_for(lambda: loop.state.current_run().get("phase") == "running", "the trainer to start")
    pid = loop.state.current_run()["pid"]
    try:
        stopping.set()  # what SIGTERM from systemd does
        thread.join(60)
        assert not thread.is_alive()
        assert agent._pid_alive(pid)
        assert cloud.run()["state"] == "RUNNING" and loop.state.current_run()["phase"] == "running"
    finally:
        os.kill(pid, signal.SIGKILL)


def test_after_an_agent_restart_a_still_running_container_is_adopted_and_its_exit_recorded(
        agent, cloud, tmp_path, logs):
    cloud.hold_run()
    polls = []

    class Docker(agent.DockerLauncher):
        def running(self, name):
            return name == f"ml-run-{RUN_ID}-1"

        def adopt(self, name):
            def poll():  # the container exits 0 a few polls after the adoption
                polls.append(name)
                return 0 if len(polls) > 3 else None

            return agent.TrainerProcess({"container": name}, poll)

    config = make_config(agent, tmp_path, ML_LEASE_SECONDS="5", ML_LEASE_RENEW_SECONDS="0.2", ML_GPU_COUNT="1",
                         ML_HEALTH_GATE="off", ML_KERNEL_LOG="off")
    loop = agent.RunLoop(config, imds=StaticImds(), s3=cloud.s3, dynamodb=cloud.dynamodb, sns=cloud.sns,
                         events=cloud.events, launcher=Docker(config, lambda region: None, run=Runner()),
                         log=agent.JsonLog(logs.stream), monitor_poll_seconds=0.05, upload_poll_seconds=0.1)
    loop.state.set_current_run({"run_id": RUN_ID, "attempt": 1, "phase": "running", "instance_id": INSTANCE,
                                "launcher": "docker", "container": f"ml-run-{RUN_ID}-1"})
    loop.serve(max_runs=0)
    assert logs.steps("recover")[0]["adopted"] is True
    run = cloud.run()
    assert (run["state"], run["attempts"][0]["end_reason"], run["attempt_count"]) == ("SUCCEEDED", "finished", 1)


def test_a_latest_that_names_no_checkpoint_counts_as_a_failure_instead_of_looping(agent, cloud, tmp_path, logs):
    cloud.put_run(command=python("pass"), max_failures=1)
    cloud.s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/LATEST", Body=f"runs/{RUN_ID}/20261129T000000000000Z/")
    make_loop(agent, tmp_path, logs, cloud).serve(max_runs=1)
    run = cloud.run()
    assert (run["state"], run["attempts"][0]["detail"], "exit_code" in run["attempts"][0]) == (
        "FAILED", "restore-failed", False)
    assert "restore-failed" in cloud.alerts()[0]["Message"]


def test_an_s3_error_during_restore_gives_the_run_back_without_counting(agent, cloud, tmp_path, logs):
    cloud.put_run(command=python("pass"), max_failures=1)
    loop = make_loop(agent, tmp_path, logs, cloud)

    class Flaky:
        def __getattr__(self, name):
            if name == "get_object":
                def fail(**kwargs):
                    raise OSError("connection reset by peer")
                return fail
            return getattr(cloud.s3, name)

    loop.s3 = Flaky()
    loop.serve(max_runs=1)
    run = cloud.run()
    assert (run["state"], run.get("failures", 0), run["attempts"][0]["detail"]) == ("PENDING", 0, "restore-failed")


def test_the_job_finished_count_ignores_the_run_just_ended_even_if_the_index_still_lists_it(agent, cloud):
    cloud.hold_run()  # what an eventually consistent index may still show right after the end
    cloud.put_run("other-00000001", state="SUCCEEDED")
    runs = table(agent, cloud)
    assert runs.active_count(excluding=RUN_ID) == 0
    cloud.put_run("queued-00000002")
    assert runs.active_count(excluding=RUN_ID) == 1
