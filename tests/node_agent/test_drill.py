"""The local interruption drill: real trainer, fake IMDS, moto S3 server, the agent as subprocesses.

Asserts what happened, never how fast: the measured times are printed (run
with -s to see them; `make bench-drill` measures with the real 5 s polling).
"""

from __future__ import annotations

import re

from tests.node_agent import drill


def test_drill_checkpoint_lands_in_s3_and_the_lifecycle_action_completes(tmp_path):
    result = drill.run_drill(tmp_path, poll_seconds=0.5, checkpoint_mb=2, save_seconds=1.0,
                             budget_seconds=60, heartbeat_seconds=1, timeout_seconds=120)
    assert result.watch_exit == 0
    assert result.checkpoint_exit == 0

    # The trainer was signalled exactly once, through systemctl, and wrote one checkpoint.
    assert result.systemctl_calls == [f"kill --signal=SIGUSR1 {drill.UNIT}"]
    assert result.trainer_state["signals"] == 1
    assert result.trainer_state["checkpoints"] == 1

    # <instance>/<UTC timestamp>/ holds exactly the trainer's files; LATEST points at it;
    # the previous checkpoint is still there.
    instance = drill.INSTANCE_ID
    prefixes = {key.split("/")[1] for key in result.objects if key.count("/") >= 2}
    new = sorted(p for p in prefixes if p != "20260101T000000Z")
    assert len(new) == 1 and re.fullmatch(r"\d{8}T\d{6}Z", new[0])
    prefix = f"{instance}/{new[0]}/"
    uploaded = {key[len(prefix):]: body for key, body in result.objects.items() if key.startswith(prefix)}
    assert uploaded == result.local_files
    assert set(uploaded) == {"CHECKPOINT_DONE", "meta.json", "model.bin", "optimizer.pt", "shards/rank-0.bin"}
    assert result.objects[f"{instance}/LATEST"] == prefix.encode()
    assert result.objects[f"{instance}/20260101T000000Z/model.bin"] == b"previous"

    # The IMDS path led; the Run Command path with the lifecycle token followed, heartbeated,
    # and completed its action with CONTINUE after the upload.
    assert drill.first(result.watch_log, "dedupe")["role"] == "leader"
    assert drill.first(result.checkpoint_log, "dedupe")["role"] == "follower"
    assert drill.first(result.checkpoint_log, "signal") is None
    heartbeats = [c for c in result.lifecycle_calls if c["action"] == "RecordLifecycleActionHeartbeat"]
    completes = [c for c in result.lifecycle_calls if c["action"] == "CompleteLifecycleAction"]
    assert heartbeats and all(c["params"]["LifecycleActionToken"] == result.token for c in heartbeats)
    assert len(completes) == 1
    assert completes[0]["params"] == {
        "LifecycleHookName": drill.HOOK,
        "AutoScalingGroupName": drill.GROUP,
        "LifecycleActionToken": result.token,
        "LifecycleActionResult": "CONTINUE",
        "InstanceId": instance,
    }

    timings = result.timings
    assert 0 <= timings["notice_to_uploaded_s"] <= timings["notice_to_completed_s"]
    print("\ndrill timings:", {k: round(v, 3) for k, v in timings.items()})
