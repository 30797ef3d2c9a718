#!/usr/bin/env bash
# Runs an agro-sql job on a Cloud TPU VM (single- or multi-host): create (or queue) the VM, copy this repo to every
# worker, install it (venv + jax[tpu]), run `agro-sql <stage> --config <spec>` on all workers at once (each worker
# calls jax.distributed.initialize() via AGRO_DISTRIBUTED=1), stream the logs, fetch worker 0's log, and delete the
# VM at the end, also on failure or Ctrl-C (unless --keep).
#
#   ./launch_tpu.sh --name agro-8b --zone us-east5-a --accelerator-type v5p-16 --queued --spot \
#       --config configs/qwen3_8b_tpu.py:/mnt/models/Qwen3-8B-Base -- --workdir gs://my-bucket/agro-8b
#
# Arguments after `--` go verbatim to agro-sql (e.g. --config.grpo.steps=10). Multi-host runs should use a gs://
# workdir so that every host writes its checkpoint shards to the same place. --dry-run prints every command.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch_tpu.sh --name NAME --zone ZONE --accelerator-type TYPE [options] [-- AGRO_SQL_ARGS...]

Required:
  --name NAME               TPU VM name (lowercase letters, digits, '-'; starts with a letter)
  --zone ZONE               e.g. us-east5-a
  --accelerator-type TYPE   e.g. v4-8, v5p-16, v5litepod-8, v6e-8
Options:
  --version RUNTIME         TPU runtime version (default: picked from the accelerator generation)
  --project PROJECT         GCP project (default: gcloud's configured project)
  --config SPEC             agro-sql config spec (default: configs/qwen3_8b_tpu.py)
  --stage STAGE             agro-sql subcommand to run (default: run)
  --spot                    use spot capacity
  --queued                  create through a queued resource and wait until it is ACTIVE
  --keep                    keep the VM after the run (default: delete it)
  --python BIN              python (>= 3.11) on the VM (default: python3.11, installed with apt)
  --repo DIR                repository to copy (default: the directory of this script)
  --dry-run                 print every command instead of running it
  -h, --help                this help
EOF
}

die() {
  echo "launch_tpu.sh: error: $*" >&2
  echo "Run 'launch_tpu.sh --help' for usage." >&2
  exit 2
}

NAME="" ZONE="" ACCEL="" VERSION="" PROJECT="" CONFIG="configs/qwen3_8b_tpu.py" STAGE="run" PYTHON="python3.11"
SPOT=0 QUEUED=0 KEEP=0 DRY_RUN=0
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EXTRA=()

need_value() { # $1 flag, $2 number of remaining args including the flag, $3 the value
  [[ "$2" -ge 2 && "$3" != --* ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name | --zone | --accelerator-type | --version | --project | --config | --stage | --python | --repo)
      need_value "$1" "$#" "${2:-}"
      case "$1" in
        --name) NAME="$2" ;;
        --zone) ZONE="$2" ;;
        --accelerator-type) ACCEL="$2" ;;
        --version) VERSION="$2" ;;
        --project) PROJECT="$2" ;;
        --config) CONFIG="$2" ;;
        --stage) STAGE="$2" ;;
        --python) PYTHON="$2" ;;
        --repo) REPO="$2" ;;
      esac
      shift 2
      ;;
    --name=* | --zone=* | --accelerator-type=* | --version=* | --project=* | --config=* | --stage=* | --python=* | --repo=*)
      flag="${1%%=*}" value="${1#*=}"
      set -- "$flag" "$value" "${@:2}"
      ;;
    --spot) SPOT=1 && shift ;;
    --queued) QUEUED=1 && shift ;;
    --keep) KEEP=1 && shift ;;
    --dry-run) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    --) shift && EXTRA=("$@") && break ;;
    *) die "unknown argument '$1' (agro-sql arguments go after '--')" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$ACCEL" ]] || die "--accelerator-type is required"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "--name '$NAME' is not a valid TPU name (lowercase letters, digits and '-', starting with a letter, <= 63 chars)"
[[ "$ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' does not look like a zone (e.g. us-east5-a)"
[[ "$ACCEL" =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] ||
  die "--accelerator-type '$ACCEL' does not look like a TPU type (e.g. v4-8, v5p-16, v5litepod-8)"
[[ "$STAGE" =~ ^[a-z][a-z0-9_-]*$ ]] || die "--stage '$STAGE' is not a subcommand name"
[[ -n "$CONFIG" ]] || die "--config must not be empty"
config_file="${CONFIG%%:*}"
[[ -f "$REPO/$config_file" ]] || die "--config file '$config_file' not found in $REPO"

if [[ -z "$VERSION" ]]; then
  case "$ACCEL" in
    v4-*) VERSION="tpu-ubuntu2204-base" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) die "no default --version for accelerator type '$ACCEL'; pass --version" ;;
  esac
fi

# Flags every gcloud call shares.
LOC=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && LOC+=("--project=$PROJECT")

quote() { # one word, POSIX-shell quoted only if it needs to be (readable, and shlex.split-able)
  if [[ "$1" =~ ^[-A-Za-z0-9_./:=@%+,]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run() { # prints the command in dry-run mode, else runs it
  if [[ "$DRY_RUN" == 1 ]]; then
    local word line=""
    for word in "$@"; do line+="${line:+ }$(quote "$word")"; done
    echo "$line"
  else
    echo "+ $*" >&2
    "$@"
  fi
}

cleanup() {
  local rc=$?
  if [[ "$KEEP" == 1 ]]; then
    echo "launch_tpu.sh: keeping $NAME (delete it with: gcloud compute tpus tpu-vm delete $NAME --zone=$ZONE)" >&2
  elif [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME" "${LOC[@]}" --force --quiet || rc=1
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet || rc=1
  fi
  exit "$rc"
}

# 1. Create (or queue) the VM. Once that succeeded, the VM is deleted whatever happens (the trap is set only
# then, so a failed create never deletes an existing VM of the same name).
SPOT_FLAG=()
[[ "$SPOT" == 1 ]] && SPOT_FLAG=(--spot)
trap 'exit 130' INT TERM
if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOC[@]}" \
    --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${SPOT_FLAG[@]}"
  trap cleanup EXIT
  describe=(gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}" "--format=value(state.state)")
  if [[ "$DRY_RUN" == 1 ]]; then
    run "${describe[@]}"
  else
    while true; do
      state="$("${describe[@]}")"
      echo "launch_tpu.sh: queued resource $NAME is $state" >&2
      case "$state" in
        ACTIVE) break ;;
        FAILED | SUSPENDED) exit 1 ;;
      esac
      sleep 30
    done
  fi
else
  run gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}" --accelerator-type="$ACCEL" --version="$VERSION" \
    "${SPOT_FLAG[@]}"
  trap cleanup EXIT
fi

# 2. Copy the working tree (without venv, runs, git history) to every worker.
TARBALL="${TMPDIR:-/tmp}/agro-jax-$NAME.tar.gz"
run tar -czf "$TARBALL" --exclude=./.venv --exclude=./runs --exclude=./.git -C "$REPO" .
run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:agro-jax.tar.gz" --worker=all "${LOC[@]}"

# 3. Install on every worker: a fresh venv with the package and jax[tpu].
SETUP="set -e; (command -v $PYTHON >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq $PYTHON \
$PYTHON-venv)); rm -rf ~/agro-jax && mkdir -p ~/agro-jax && tar -xzf ~/agro-jax.tar.gz -C ~/agro-jax && cd ~/agro-jax \
&& $PYTHON -m venv .venv && . .venv/bin/activate && pip install -q -U pip && pip install -q -e . 'jax[tpu]'"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOC[@]}" --command="$SETUP"

# 4. Run on all workers at once, streaming their output (and keeping it in ~/agro-jax/run.log on each).
AGRO_CMD="$(printf '%q ' agro-sql "$STAGE" --config "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"})"
RUN="set -o pipefail; cd ~/agro-jax && . .venv/bin/activate && AGRO_DISTRIBUTED=1 ${AGRO_CMD% } 2>&1 | tee run.log"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOC[@]}" --command="$RUN"

# 5. Keep worker 0's log locally.
[[ "$DRY_RUN" == 1 ]] || mkdir -p "$REPO/runs"
run gcloud compute tpus tpu-vm scp "$NAME:agro-jax/run.log" "$REPO/runs/$NAME-run.log" --worker=0 "${LOC[@]}"
