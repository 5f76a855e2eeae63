"""GPU health: the launch gate, the Xid watch and the hung-run watch of the node agent.

The gate reads recorded-shape nvidia-smi / dcgmi / kernel log outputs
(fixtures/gpu/README.md says where each shape comes from); the run loop parts
run against moto with real local trainer processes.
"""

from __future__ import annotations

import datetime as dt
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tests.node_agent.helpers import INSTANCE, RUN_ID, Cloud, StaticImds, make_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gpu"


class GpuTools:
    """subprocess.run for nvidia-smi / dcgmi / journalctl answering from fixture files; records commands."""

    def __init__(self, query_gpu="p4d-query-gpu-healthy.csv", rows="p4d-remapped-rows-healthy.csv",
                 dcgm=None, dcgm_code=0, journal="kern-boot-clean.log"):
        self.files = {"--query-gpu": query_gpu, "--query-remapped-rows": rows}
        self.dcgm, self.dcgm_code, self.journal = dcgm, dcgm_code, journal
        self.commands = []

    def __call__(self, argv, **kwargs):
        self.commands.append(argv)
        if argv[0] == "dcgmi":
            if self.dcgm is None:
                raise FileNotFoundError(2, "No such file or directory", "dcgmi")
            return subprocess.CompletedProcess(argv, self.dcgm_code, (FIXTURES / self.dcgm).read_text(), "")
        if argv[0] == "journalctl":
            return subprocess.CompletedProcess(argv, 0, (FIXTURES / self.journal).read_text(), "")
        if argv[0] == "nvidia-smi":
            for flag, name in self.files.items():
                if any(a.startswith(flag + "=") for a in argv):
                    return subprocess.CompletedProcess(argv, 0, (FIXTURES / name).read_text(), "")
        if argv[:2] == ["docker", "stop"]:
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(f"unexpected command {argv}")


def gate(agent, tmp_path, logs, tools, instance_type="p4d.24xlarge", **env):
    config = make_config(agent, tmp_path, **env)
    return agent.HealthGate(config.health, tools, agent.JsonLog(logs.stream), instance_type)


# ----------------------------------------------------------------------------- Xid lines and the fatal list


@pytest.mark.parametrize("line, expected", [
    ("NVRM: Xid (PCI:0000:90:1d): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.", (79, "0000:90:1d")),
    ("[ 8123.4] NVRM: Xid (PCI:0000:10:1c): 48, pid=1896, DBE (0x1) has been detected on GPU", (48, "0000:10:1c")),
    ("kernel: NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu "
     "to activate.", (63, "0000:10:1c")),
    ("NVRM: Xid (0000:01:00): 3, C 00000005 SC 00000007 M 00001ffc Data ffffffff", (3, "0000:01:00")),
    ("NVRM: GPU 0000:90:1d.0: GPU has fallen off the bus.", None),
    ("nvidia-uvm: Loaded the UVM driver, major device number 235.", None),
])
def test_xid_lines_are_parsed_as_the_driver_prints_them(agent, line, expected):
    assert agent.parse_xid(line) == expected


def test_the_fatal_list_holds_the_hardware_xids_and_not_the_application_ones(agent):
    assert {48, 63, 64, 74, 79, 92, 94, 95, 119, 120} == set(agent.FATAL_XIDS)
    assert not {13, 31, 43, 45} & set(agent.FATAL_XIDS)


# ----------------------------------------------------------------------------- the launch gate


def test_eight_healthy_a100s_on_a_p4d_pass_and_dcgm_missing_is_skipped(agent, tmp_path, logs):
    tools = GpuTools()
    assert gate(agent, tmp_path, logs, tools).check() == []
    assert logs.steps("health-gate")[-1] == {**logs.steps("health-gate")[-1], "check": "dcgm", "skipped": True}


def test_a_gpu_missing_from_the_instance_type_fails(agent, tmp_path, logs):
    problems = gate(agent, tmp_path, logs, GpuTools(query_gpu="p4d-query-gpu-7-gpus.csv")).check()
    assert problems == ["7 GPUs visible, 8 expected for p4d.24xlarge"]


def test_the_expected_count_comes_from_the_env_over_the_table_and_an_unknown_type_skips_it(agent, tmp_path, logs):
    tools = GpuTools(query_gpu="p4d-query-gpu-7-gpus.csv")
    assert gate(agent, tmp_path, logs, tools, ML_EXPECTED_GPU_COUNT="7").check() == []
    assert gate(agent, tmp_path, logs, tools, instance_type="x9.unknown").check() == []
    assert logs.steps("health-gate")[-2]["check"] == "gpu-count"


def test_uncorrected_ecc_errors_above_the_threshold_fail(agent, tmp_path, logs):
    tools = GpuTools(query_gpu="p4d-query-gpu-uncorrected-ecc.csv")
    assert gate(agent, tmp_path, logs, tools).check() == [
        "GPU 3 (00000000:20:1D.0): 2 uncorrected ECC errors since the driver loaded (max 0)"]
    assert gate(agent, tmp_path, logs, tools, ML_GPU_ECC_UNCORRECTED_MAX="2").check() == []


def test_a_pending_row_remap_fails(agent, tmp_path, logs):
    problems = gate(agent, tmp_path, logs, GpuTools(rows="p4d-remapped-rows-pending.csv")).check()
    assert problems == ["GPU 00000000:90:1D.0: a row remapping is pending (needs a GPU reset)"]


def test_retired_pages_on_a_v100_count_against_the_threshold_and_pending_fails(agent, tmp_path, logs):
    tools = GpuTools(query_gpu="p3-query-gpu-retired-pages.csv", rows="g5-remapped-rows-healthy.csv")
    assert gate(agent, tmp_path, logs, tools, instance_type="p3.2xlarge", ML_GPU_RETIRED_PAGES_MAX="64").check() == [
        "GPU 0 (00000000:00:1E.0): a page retirement is pending (needs a GPU reset)"]
    assert gate(agent, tmp_path, logs, tools, instance_type="p3.2xlarge", ML_GPU_RETIRED_PAGES_MAX="60").check()[0] \
        == "GPU 0 (00000000:00:1E.0): 64 retired pages (max 60)"
    healthy = GpuTools(query_gpu="p3-query-gpu-healthy.csv", rows="g5-remapped-rows-healthy.csv")
    assert gate(agent, tmp_path, logs, healthy, instance_type="p3.2xlarge").check() == []


def test_dcgm_level_one_runs_where_installed_and_its_failed_test_is_the_reason(agent, tmp_path, logs):
    tools = GpuTools(dcgm="dcgmi-diag-r1-pass.json")
    assert gate(agent, tmp_path, logs, tools).check() == []
    assert ["dcgmi", "diag", "-r", "1", "-j"] in tools.commands
    failing = GpuTools(dcgm="dcgmi-diag-r1-fail.json", dcgm_code=226)
    [problem] = gate(agent, tmp_path, logs, failing).check()
    assert problem.startswith("DCGM Page Retirement/Row Remap failed on GPU 2: GPU 2 had uncorrectable memory")


def test_a_non_zero_dcgm_exit_without_a_failed_test_still_fails(agent, tmp_path, logs):
    [problem] = gate(agent, tmp_path, logs, GpuTools(dcgm="dcgmi-diag-r1-pass.json", dcgm_code=1)).check()
    assert problem.startswith("dcgmi diag -r 1 exited 1")


def test_a_fatal_xid_since_boot_fails_and_application_xids_do_not(agent, tmp_path, logs):
    assert gate(agent, tmp_path, logs, GpuTools(journal="kern-boot-xid79.log")).check() == [
        "Xid 79 (GPU has fallen off the bus) on 0000:90:1d since boot"]
    assert gate(agent, tmp_path, logs, GpuTools(journal="kern-boot-app-xid.log")).check() == []
    # A kernel log file instead of the journal (ML_KERNEL_LOG=<path>)
    file_gate = gate(agent, tmp_path, logs, GpuTools(), ML_KERNEL_LOG=str(FIXTURES / "kern-boot-xid79.log"))
    assert file_gate.check() == ["Xid 79 (GPU has fallen off the bus) on 0000:90:1d since boot"]


def test_no_nvidia_smi_at_all_fails_the_gate(agent, tmp_path, logs):
    def missing(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    problems = gate(agent, tmp_path, logs, missing, ML_KERNEL_LOG="off").check()
    assert problems == ["nvidia-smi --query-gpu failed: nvidia-smi not found"]


# ----------------------------------------------------------------------------- the run loop


class Autoscaling:
    """Records SetInstanceHealth (moto has no SetInstanceHealth for an instance outside its own groups)."""

    def __init__(self):
        self.calls = []

    def set_instance_health(self, **kwargs):
        self.calls.append(kwargs)
        return {}


@pytest.fixture
def cloud(aws_env):
    with mock_aws():
        yield Cloud()


def health_loop(agent, tmp_path, logs, cloud, tools, *, kernel=None, stop=lambda: False, imds=None, **env):
    settings = {"ML_TRAINER_LAUNCHER": "process", "ML_LEASE_SECONDS": "5", "ML_LEASE_RENEW_SECONDS": "0.2",
                "ML_CLAIM_POLL_SECONDS": "0.05", "ML_GPU_COUNT": "8", "ML_KERNEL_LOG": str(tmp_path / "kmsg"),
                "ML_PROGRESS_DIR": str(tmp_path / "progress"), **env}
    config = make_config(agent, tmp_path, **settings)
    autoscaling = Autoscaling()
    lines: "queue.Queue[str]" = queue.Queue()

    def kernel_lines(stop_event):
        while not stop_event.is_set():
            try:
                yield lines.get(timeout=0.05)
            except queue.Empty:
                continue

    loop = agent.RunLoop(config, imds=imds or TypedImds(), s3=cloud.s3, dynamodb=cloud.dynamodb, sns=cloud.sns,
                         events=cloud.events, launcher=agent.ProcessLauncher(tmp_path / "trainer-logs"),
                         log=agent.JsonLog(logs.stream), stop=stop, monitor_poll_seconds=0.05,
                         upload_poll_seconds=0.1, run=tools, autoscaling=autoscaling,
                         cloudwatch=boto3.client("cloudwatch", region_name="us-east-1"), kernel_lines=kernel_lines)
    return loop, autoscaling, lines


class TypedImds(StaticImds):
    def get(self, path, retry_seconds=None):
        return "p4d.24xlarge" if path == "/latest/meta-data/instance-type" else None


def metric_names(namespace="ML/Training"):
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    return sorted({(m["MetricName"], tuple((d["Name"], d["Value"]) for d in m["Dimensions"]))
                   for m in cloudwatch.list_metrics(Namespace=namespace)["Metrics"]})


def in_thread(fn):
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def wait_for(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_failed_gate_says_why_marks_the_instance_unhealthy_and_never_claims(agent, cloud, tmp_path, logs):
    cloud.put_run(command=("true",))
    polls = []
    loop, autoscaling, _ = health_loop(agent, tmp_path, logs, cloud, GpuTools(query_gpu="p4d-query-gpu-7-gpus.csv"),
                                       stop=lambda: len(logs.steps("claim")) > 0 and polls.append(1) is None
                                       and len(polls) > 5, ML_KERNEL_LOG="off")
    loop.serve()
    [verdict] = [line for line in logs.steps("health-gate") if "healthy" in line]
    assert verdict["healthy"] is False and verdict["problems"] == ["7 GPUs visible, 8 expected for p4d.24xlarge"]
    assert autoscaling.calls == [{"InstanceId": INSTANCE, "HealthStatus": "Unhealthy",
                                  "ShouldRespectGracePeriod": False}]
    assert [line.get("claimed") for line in logs.steps("claim")] == [False]  # "instance is draining"
    run = cloud.run()
    assert (run["state"], run["attempt_count"]) == ("PENDING", 0)
    [alert] = cloud.alerts()
    assert alert["Subject"] == f"[ml-dev] instance {INSTANCE} failed the GPU health gate"
    assert "7 GPUs visible, 8 expected" in alert["Message"]
    assert ("GpuHealthCheckFailed", (("AutoScalingGroupName", "gpu-fleet"),)) in metric_names()


TRAINER = (
    "import os, pathlib, signal, sys, time\n"
    "d = pathlib.Path(os.environ['ML_CHECKPOINT_DIR']); d.mkdir(parents=True, exist_ok=True)\n"
    "progress = pathlib.Path(os.environ['ML_PROGRESS_FILE'])\n"
    "hang_at = int(sys.argv[1])\n"
    "asked = []\n"
    "signal.signal(signal.SIGUSR1, lambda *a: asked.append(1))\n"
    "step = int((d / 'step').read_text()) if os.environ['ML_RESUME_FROM'] else 0\n"
    "def checkpoint():\n"
    "    tmp = d / '.step.tmp'; tmp.write_text(str(step)); os.replace(tmp, d / 'step')\n"
    "    (d / 'CHECKPOINT_DONE').write_text(str(step))\n"
    "while step < 400:\n"
    "    if step == hang_at:\n"
    "        time.sleep(3600)\n"
    "    step += 1; time.sleep(0.01)\n"
    "    tmp = progress.with_name('.p'); tmp.write_text(str(step)); os.replace(tmp, progress)\n"
    "    if asked or step % 20 == 0:\n"
    "        asked.clear(); checkpoint()\n"
    "checkpoint()\n")


def trainer(hang_at=-1):
    return (sys.executable, "-c", TRAINER, str(hang_at))


def test_a_fatal_xid_checkpoints_releases_the_run_marks_unhealthy_and_claims_nothing_more(
        agent, cloud, tmp_path, logs):
    first = cloud.put_run(command=trainer(), max_failures=1)
    # Queued after the first run (claims go oldest first), whatever the date the test runs on.
    later = dt.datetime.strptime(first["created_at"], "%Y-%m-%dT%H:%M:%SZ") + dt.timedelta(hours=1)
    cloud.put_run("other-00000002", command=("true",), created_at=later.strftime("%Y-%m-%dT%H:%M:%SZ"))
    loop, autoscaling, lines = health_loop(agent, tmp_path, logs, cloud, GpuTools(),
                                           stop=lambda: bool(logs.steps("alert")) and len(logs.steps("claim")) > 1)
    thread = in_thread(loop.serve)
    wait_for(lambda: (tmp_path / "progress" / "PROGRESS").exists()
             and int((tmp_path / "progress" / "PROGRESS").read_text() or 0) > 30, "the trainer to make progress")
    lines.put("NVRM: Xid (PCI:0000:10:1c): 13, pid=4121, name=python, Graphics SM Warp Exception\n")
    lines.put("NVRM: Xid (PCI:0000:90:1d): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n")
    thread.join(timeout=60)
    assert not thread.is_alive()
    run = cloud.run()
    assert run["state"] == "PENDING" and run.get("failures", 0) == 0
    [attempt] = run["attempts"]
    assert (attempt["end_reason"], attempt["detail"]) == ("reclaimed", "gpu-xid-79")
    assert run["last_checkpoint"].startswith(f"s3://ckpt-bucket/runs/{RUN_ID}/")
    uploaded = cloud.objects(run["last_checkpoint"].split("/", 3)[3])
    assert int(uploaded[run["last_checkpoint"].split("/", 3)[3] + "step"]) > 30  # the answer to the signal
    assert autoscaling.calls == [{"InstanceId": INSTANCE, "HealthStatus": "Unhealthy",
                                  "ShouldRespectGracePeriod": False}]
    steps = [line["step"] for line in logs.lines]
    assert steps.index("set-instance-health") < steps.index("signal") < steps.index("release")
    assert [line["xid"] for line in logs.steps("xid")] == [13, 79]
    assert [line["fatal"] for line in logs.steps("xid")] == [False, True]
    assert cloud.run("other-00000002")["state"] == "PENDING"  # no further claims
    [alert] = cloud.alerts()
    assert alert["Subject"] == f"[ml-dev] instance {INSTANCE} GPU fault Xid 79"
    names = metric_names()
    assert ("GpuXid", (("AutoScalingGroupName", "gpu-fleet"), ("Xid", "13"))) in names
    assert ("GpuXid", (("AutoScalingGroupName", "gpu-fleet"), ("Xid", "79"))) in names


def test_a_hung_trainer_is_alerted_once_and_with_restart_its_attempt_fails_as_hung(agent, cloud, tmp_path, logs):
    cloud.put_run(command=trainer(hang_at=50), max_failures=2)
    loop, _, _ = health_loop(agent, tmp_path, logs, cloud, GpuTools(), ML_HUNG_AFTER_SECONDS="1",
                             ML_HUNG_ACTION="restart",
                             stop=lambda: cloud.run()["state"] == "FAILED" and bool(logs.steps("job-finished")))
    loop.serve()
    run = cloud.run()
    assert (run["state"], run["end_reason"], run["failures"]) == ("FAILED", "max-failures", 2)
    assert [(a["end_reason"], a.get("detail"), "exit_code" in a) for a in run["attempts"]] == [
        ("failed", "hung", False), ("failed", "hung", False)]
    hung = [line for line in logs.steps("hung")]
    assert [line["last_progress"] for line in hung] == ["50", "50"]  # the second resumed from step 40, hung at 50
    alerts = cloud.alerts()
    assert [a["Subject"] for a in alerts] == [f"[ml-dev] run {RUN_ID} hung"] * 2 + [f"[ml-dev] run {RUN_ID} FAILED"]
    assert "counted as a failure" in alerts[0]["Message"]


def test_with_the_alert_action_a_slow_trainer_is_reported_once_and_keeps_running(agent, cloud, tmp_path, logs):
    command = (sys.executable, "-c", "import time; time.sleep(2.5)")  # reports no progress at all
    cloud.put_run(command=command, max_failures=1)
    loop, _, _ = health_loop(agent, tmp_path, logs, cloud, GpuTools(), ML_HUNG_AFTER_SECONDS="0.5",
                             stop=lambda: cloud.run()["state"] == "SUCCEEDED" and bool(logs.steps("job-finished")))
    loop.serve()
    assert cloud.run()["state"] == "SUCCEEDED"
    [hung] = logs.steps("hung")
    assert hung["action"] == "alert" and "last_progress" not in hung  # JsonLog leaves out None
    assert [a["Subject"] for a in cloud.alerts()] == [f"[ml-dev] run {RUN_ID} hung"]


def test_the_trainer_gets_the_progress_file_and_docker_mounts_its_directory(agent, tmp_path):
    config = make_config(agent, tmp_path, ML_PROGRESS_DIR="/opt/ml/progress")
    argv = agent.DockerLauncher(config, lambda region: None).command(RUN_ID, 1, INSTANCE, {"image": "x"}, {})
    assert "--volume /opt/ml/progress:/opt/ml/progress" in " ".join(argv)
    assert config.health.progress_file == Path("/opt/ml/progress/PROGRESS")


@pytest.mark.parametrize("name, value, message", [
    ("ML_HUNG_ACTION", "kill", "ML_HUNG_ACTION='kill' is not one of alert, restart"),
    ("ML_KERNEL_LOG", "kmsg", "ML_KERNEL_LOG='kmsg' is not 'journal', 'off' or an absolute file path"),
    ("ML_HUNG_AFTER_SECONDS", "-1", "ML_HUNG_AFTER_SECONDS='-1' is out of range"),
    ("ML_HEALTH_GATE", "maybe", "ML_HEALTH_GATE='maybe' is not one of on, off"),
])
def test_bad_health_settings_are_named(agent, tmp_path, name, value, message):
    with pytest.raises(agent.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config(agent, tmp_path, **{name: value})


def test_the_journal_is_followed_from_now_with_journalctl_and_a_file_from_its_end(agent, tmp_path):
    started = []

    class Process:
        def __init__(self, argv, **kwargs):
            started.append(argv)
            self.stdout = iter(["NVRM: Xid (PCI:0000:10:1c): 79, pid=1, GPU has fallen off the bus.\n"])

        def kill(self):
            started.append("killed")

    stop = threading.Event()
    assert list(agent.follow_kernel_log("journal", stop, popen=Process)) == [
        "NVRM: Xid (PCI:0000:10:1c): 79, pid=1, GPU has fallen off the bus.\n"]
    assert started == [["journalctl", "-k", "-f", "-n", "0", "--no-pager", "-o", "cat"], "killed"]
    log = tmp_path / "kern.log"
    log.write_text("NVRM: Xid (PCI:0000:10:1c): 48, old line before the agent started\n")
    lines = agent.follow_kernel_log(str(log), stop, poll_seconds=0.01)
    with open(log, "a") as out:
        out.write("NVRM: Xid (PCI:0000:10:1c): 79, new\npartial")
    assert next(lines) == "NVRM: Xid (PCI:0000:10:1c): 79, new"  # the old line and the unfinished one are not
    stop.set()
    assert list(lines) == []


def test_a_gpu_lost_while_training_is_a_gpu_fault_found_by_the_driver_poll(agent, cloud, tmp_path, logs):
    cloud.put_run(command=trainer(), max_failures=1)
    tools = GpuTools()
    loop, autoscaling, _ = health_loop(agent, tmp_path, logs, cloud, tools, ML_GPU_POLL_SECONDS="0.2",
                                       stop=lambda: bool(logs.steps("alert")) and len(logs.steps("claim")) > 1)
    thread = in_thread(loop.serve)
    wait_for(lambda: (tmp_path / "progress" / "PROGRESS").exists(), "the trainer to make progress")
    tools.files["--query-gpu"] = "p4d-query-gpu-7-gpus.csv"  # GPU 7 fell off the bus
    thread.join(timeout=60)
    assert not thread.is_alive()
    [attempt] = cloud.run()["attempts"]
    assert (attempt["end_reason"], attempt["detail"]) == ("reclaimed", "gpu-nvidia-smi")
    assert [c["HealthStatus"] for c in autoscaling.calls] == ["Unhealthy"]
    assert logs.steps("gpu-poll")[0]["problems"] == ["7 GPUs visible, 8 expected for p4d.24xlarge"]
    [alert] = cloud.alerts()
    assert alert["Subject"] == f"[ml-dev] instance {INSTANCE} GPU fault (nvidia-smi)"
    assert "7 GPUs visible" in alert["Message"]
