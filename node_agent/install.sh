#!/usr/bin/env bash
# Install and start ml-node-agent. Run as root by the launch template's user
# data after the agent's asset is unzipped into /opt/ml-node-agent/ (see
# CONTRACT.md and RUNS_CONTRACT.md): writes /etc/ml-node-agent.env from the
# variables below, installs the two systemd units (the IMDS watch and the run
# loop: separate, so a crash of one never stops the other from acting on a
# spot notice), enables and (re)starts them. Safe to re-run.
#
# Install locations can be moved for tests (ML_AGENT_PREFIX, ML_ENV_FILE,
# ML_SYSTEMD_DIR); ML_AGENT_PYTHON picks the interpreter (default: the first
# python3 >= 3.9 with boto3).
set -euo pipefail

REQUIRED_VARS=(
  ML_CHECKPOINT_BUCKET
  ML_CHECKPOINT_DIR
  ML_CHECKPOINT_DONE_MARKER
  ML_TRAINING_SIGNAL
  ML_CHECKPOINT_BUDGET_SECONDS
  ML_HEARTBEAT_SECONDS
  ML_AUTOSCALING_GROUP_NAME
  ML_LIFECYCLE_HOOK_NAME
  AWS_REGION
  ML_STAGE
  ML_RUNS_TABLE
  ML_RUNS_LOG_GROUP
  ML_ALERTS_TOPIC_ARN
)
# Written only when set; the agent's defaults apply otherwise (RUNS_CONTRACT.md).
OPTIONAL_VARS=(
  ML_EVENT_BUS_NAME
  ML_TRAINER_LAUNCHER
  ML_LEASE_SECONDS
  ML_LEASE_RENEW_SECONDS
  ML_CLAIM_POLL_SECONDS
  ML_GPU_COUNT
  ML_HEALTH_GATE
  ML_EXPECTED_GPU_COUNT
  ML_GPU_ECC_UNCORRECTED_MAX
  ML_GPU_RETIRED_PAGES_MAX
  ML_KERNEL_LOG
  ML_PROGRESS_DIR
  ML_HUNG_AFTER_SECONDS
  ML_HUNG_ACTION
  ML_METRICS_NAMESPACE
  ML_GPU_POLL_SECONDS
)
UNITS=(ml-node-agent.service ml-node-agent-runs.service)
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="${ML_AGENT_PREFIX:-/opt/ml-node-agent}"
ENV_FILE="${ML_ENV_FILE:-/etc/ml-node-agent.env}"
SYSTEMD_DIR="${ML_SYSTEMD_DIR:-/etc/systemd/system}"

fail() {
  echo "install.sh: $*" >&2
  exit 1
}

missing=()
for name in "${REQUIRED_VARS[@]}"; do
  [[ -n "${!name:-}" ]] || missing+=("$name")
done
if ((${#missing[@]})); then
  fail "missing required variable(s): ${missing[*]} (CONTRACT.md lists what user data must pass)"
fi
WRITTEN_VARS=("${REQUIRED_VARS[@]}")
for name in "${OPTIONAL_VARS[@]}"; do
  [[ -z "${!name:-}" ]] || WRITTEN_VARS+=("$name")
done
for name in "${WRITTEN_VARS[@]}"; do
  [[ "${!name}" != *$'\n'* ]] || fail "$name must be a single line"
done
for name in ML_CHECKPOINT_BUDGET_SECONDS ML_HEARTBEAT_SECONDS; do
  [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || fail "$name=${!name} is not a whole number of seconds"
done
for path in "$PREFIX" "$ENV_FILE" "$SYSTEMD_DIR"; do
  [[ "$path" == /* && "$path" != *[\|\&]* ]] || fail "install path $path must be absolute (and contain no '|' or '&')"
done

# The agent needs Python 3.9+ with boto3. Deep Learning AMIs ship it in more
# than one place; an explicit ML_AGENT_PYTHON is used as given.
usable() { "$1" -c 'import sys, boto3; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; }
PYTHON="${ML_AGENT_PYTHON:-}"
if [[ -n "$PYTHON" ]]; then
  usable "$PYTHON" || fail "ML_AGENT_PYTHON=$PYTHON is not Python 3.9+ with boto3"
else
  for candidate in "$(command -v python3 || true)" /opt/pytorch/bin/python3 /opt/conda/bin/python3; do
    if [[ -n "$candidate" && -x "$candidate" ]] && usable "$candidate"; then
      PYTHON="$candidate"
      break
    fi
  done
  if [[ -z "$PYTHON" ]] && command -v python3 >/dev/null; then
    if command -v dnf >/dev/null; then
      dnf install -y -q python3-boto3 >&2 || true
    elif command -v apt-get >/dev/null; then
      apt-get install -y -q python3-boto3 >&2 || true
    fi
    usable "$(command -v python3)" && PYTHON="$(command -v python3)"
  fi
  [[ -n "$PYTHON" ]] || fail "no Python 3.9+ with boto3 found (tried python3 on PATH, /opt/pytorch, /opt/conda; set ML_AGENT_PYTHON)"
fi
PYTHON="$(command -v "$PYTHON")"

install -d -m 0755 "$PREFIX" "$SYSTEMD_DIR" "$(dirname "$ENV_FILE")"
if [[ "$SRC_DIR" != "$(cd "$PREFIX" && pwd)" ]]; then
  install -m 0755 "$SRC_DIR/ml_node_agent.py" "$PREFIX/ml_node_agent.py"
  for unit in "${UNITS[@]}"; do
    install -m 0644 "$SRC_DIR/$unit" "$PREFIX/$unit"
  done
  install -m 0755 "$SRC_DIR/install.sh" "$PREFIX/install.sh"
else
  # Asset zips do not keep the executable bit.
  chmod 0755 "$PREFIX/ml_node_agent.py" "$PREFIX/install.sh"
fi

# systemd EnvironmentFile syntax: double-quoted, backslash and quote escaped.
tmp_env="$ENV_FILE.tmp.$$"
trap 'rm -f "$tmp_env"' EXIT
{
  echo "# Written by $PREFIX/install.sh; read by ${UNITS[*]} and by ml_node_agent.py."
  for name in "${WRITTEN_VARS[@]}"; do
    value="${!name//\\/\\\\}"
    printf '%s="%s"\n' "$name" "${value//\"/\\\"}"
  done
} >"$tmp_env"
chmod 0644 "$tmp_env"

# Validate with the agent's own rules before anything starts.
if ! check_output="$(env PYTHONDONTWRITEBYTECODE=1 "$PYTHON" - "$PREFIX" "$tmp_env" 2>&1 <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import ml_node_agent as agent
try:
    agent.Config.from_env(agent.read_env_file(__import__("pathlib").Path(sys.argv[2])))
except agent.ConfigError as error:
    sys.exit(str(error))
PY
)"; then
  fail "$check_output"
fi
mv -f "$tmp_env" "$ENV_FILE"
trap - EXIT

for unit in "${UNITS[@]}"; do
  sed -e "s|/usr/bin/python3|$PYTHON|" \
      -e "s|/opt/ml-node-agent|$PREFIX|g" \
      -e "s|/etc/ml-node-agent.env|$ENV_FILE|g" \
      "$SRC_DIR/$unit" >"$SYSTEMD_DIR/$unit"
  chmod 0644 "$SYSTEMD_DIR/$unit"
done

systemctl daemon-reload
systemctl enable "${UNITS[@]}"
systemctl restart "${UNITS[@]}"
echo "install.sh: ${UNITS[*]} installed and started (python $PYTHON, config $ENV_FILE)"
