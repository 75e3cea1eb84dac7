#!/usr/bin/env bash
# launch/tpu_vm.sh: create a Cloud TPU VM (one host or a pod slice), set it up, run rmdnet_jax on it, fetch the
# results and delete it. Every step is one gcloud command; --dry-run prints those commands instead of running them.
#
# Usage: launch/tpu_vm.sh SUBCOMMAND [options] [--config.KEY=VALUE ...] [-- grid.sh options]
#
# Subcommands:
#   create     create the TPU VM (--accelerator-type, --version, --spot or --preemptible)
#   setup      on every worker: get the code (--repo URL to clone, or --local to copy this checkout), make .venv,
#              pip install -r requirements.txt "jax[tpu]==0.10.2", prepare the datasets (--data; installs
#              requirements-prepare.txt, the TensorFlow that only preparing needs)
#   run        on every worker: python -m rmdnet_jax.main --config=... --workdir=... [overrides] in a detached tmux
#              session (a dropped ssh connection does not stop it); output goes to LOG (see --log)
#   grid       on every worker: launch/grid.sh --base=WORKDIR [grid.sh options after --], the same way as run
#   logs       tail LOG on worker 0 (--follow to keep following it)
#   copy-back  copy WORKDIR from worker 0 with gcloud scp; a gs:// WORKDIR is copied with gsutil -m rsync
#   delete     delete the TPU VM
#
# Options (environment variables TPU_NAME, TPU_ZONE, TPU_TYPE and TPU_PROJECT set the first four):
#   --name=NAME               TPU VM name [rmdnet]
#   --zone=ZONE               zone [us-central2-b for v4, the only zone with v4; required for other types]
#   --project=PROJECT         Google Cloud project [gcloud's configured one]
#   --accelerator-type=TYPE   v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v6e-8, ... [v4-8]. run and grid ask
#                             the VM for its type when this is not given (dry runs use the default)
#   --version=VERSION         TPU software version [tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5-lite (v5e),
#                             v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)]
#   --spot | --preemptible    create a spot / preemptible VM: cheaper, but it can be preempted at any time (the run
#                             gets SIGTERM and checkpoints) and must then be deleted and created again; with a
#                             gs:// WORKDIR, setup and the same run command resume from the last checkpoint
#   --repo=URL [--branch=B]   setup: git clone URL (or git pull, when already cloned) on every worker
#   --local                   setup: copy this checkout (tracked and untracked, not ignored, files) to every worker
#   --remote-dir=DIR          where the code lives on the workers, relative to the home directory [rmdnet_jax]
#   --python=EXE              interpreter for .venv; installed with apt when missing [python3.11; the pins need
#                             Python 3.11 or newer and the Ubuntu 22.04 TPU images ship 3.10]
#   --jax=SPEC                the JAX TPU requirement [jax[tpu]==0.10.2]
#   --data=LIST               setup: datasets to prepare on every worker, comma-separated, or none [cifar10,cifar100]
#   --config=FILE             run: config file [configs/cifar10_rmdnet.py]
#   --workdir=DIR             run, copy-back: work directory, relative to --remote-dir, absolute, or gs://bucket/path
#                             (passed through unchanged) [workdirs/cifar10_rmdnet]; grid: the grid's base [workdirs/grid]
#   --config.KEY=VALUE        run: config overrides, passed to rmdnet_jax.main as given (quoting is kept over ssh)
#   --session=NAME            tmux session name [rmdnet]
#   --log=FILE                run, grid, logs: log file, relative to --remote-dir [logs/<workdir name>.log for run,
#                             logs/grid.log for grid; logs tails logs/latest.log, which points to the newest]
#   --lines=N --follow        logs: how many lines to show, and whether to keep following
#   --dest=DIR                copy-back: local directory to copy into [workdirs]
#   --dry-run                 print the commands instead of running them
#   --help                    show this text
#
# Multi-host slices (v4-16 and up, v5litepod-16 and up, ...) run the same command on every worker with --multihost,
# which makes rmdnet_jax.main call jax.distributed.initialize(); each host then loads its slice of every global
# batch. Their WORKDIR must be gs://...: Orbax checkpoints of a multi-host run must be visible to every host.
#
# Examples:
#   launch/tpu_vm.sh create --name=rmd --accelerator-type=v4-8 --spot
#   launch/tpu_vm.sh setup  --name=rmd --repo=GIT_URL
#   launch/tpu_vm.sh run    --name=rmd --config=configs/cifar10_rmdnet.py --workdir=workdirs/rmdnet_c10
#   launch/tpu_vm.sh run    --name=rmd --workdir=workdirs/ce_c10 --config.method.distill=False --config.stages=rgrl
#   launch/tpu_vm.sh logs   --name=rmd --follow
#   launch/tpu_vm.sh copy-back --name=rmd --workdir=workdirs/rmdnet_c10
#   launch/tpu_vm.sh delete --name=rmd
#   launch/tpu_vm.sh create --name=pod --accelerator-type=v4-32 && launch/tpu_vm.sh setup --name=pod --local
#   launch/tpu_vm.sh run    --name=pod --accelerator-type=v4-32 --workdir=gs://BUCKET/rmdnet_c10
#   launch/tpu_vm.sh grid   --name=rmd --workdir=gs://BUCKET/grid -- --cells=my_cells.txt
#
# Needs bash 4.4 or newer (macOS: brew install bash) and, unless --dry-run, gcloud (and gsutil for gs:// copy-back).
set -euo pipefail

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  die "needs bash 4.4 or newer (this is $BASH_VERSION); on macOS: brew install bash"
fi
# A check that fails inside $(...) must stop the script too, not yield an empty string.
shopt -s inherit_errexit

# One shell word per argument: printf %q output survives one round of shell parsing (local shell, or the remote
# shell that ssh hands --command to), so a value with spaces stays one argument.
quote() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }

# Runs a command, or prints it (quoted, so it can be pasted) in a dry run.
run() {
  if ((DRY_RUN)); then quote "$@"; echo; else "$@"; fi
}

# --- options -----------------------------------------------------------------------------------------------------
SUBCOMMAND=${1:-}
case $SUBCOMMAND in
  -h|--help|help) usage; exit 0 ;;
  create|setup|run|grid|logs|copy-back|delete) shift ;;
  '') usage >&2; exit 2 ;;
  *) die "unknown subcommand '$SUBCOMMAND'; use create, setup, run, grid, logs, copy-back or delete (see --help)" ;;
esac

NAME=${TPU_NAME:-rmdnet}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
TYPE=${TPU_TYPE:-}
VERSION=''
SPOT=0
PREEMPTIBLE=0
REPO=''
BRANCH=''
LOCAL=0
REMOTE_DIR=rmdnet_jax
PYTHON_EXE=python3.11
JAX_SPEC='jax[tpu]==0.10.2'
DATA=cifar10,cifar100
CONFIG=configs/cifar10_rmdnet.py
WORKDIR=''
SESSION=rmdnet
LOG=''
LINES=100
FOLLOW=0
DEST=workdirs
DRY_RUN=0
OVERRIDES=()
GRID_ARGS=()

set_option() {
  case $1 in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --project) PROJECT=$2 ;;
    --accelerator-type) TYPE=$2 ;;
    --version) VERSION=$2 ;;
    --repo) REPO=$2 ;;
    --branch) BRANCH=$2 ;;
    --remote-dir) REMOTE_DIR=$2 ;;
    --python) PYTHON_EXE=$2 ;;
    --jax) JAX_SPEC=$2 ;;
    --data) DATA=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --session) SESSION=$2 ;;
    --log) LOG=$2 ;;
    --lines) LINES=$2 ;;
    --dest) DEST=$2 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
}

while (($#)); do
  case $1 in
    --) shift; GRID_ARGS=("$@"); break ;;
    --config.*) OVERRIDES+=("$1") ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --local) LOCAL=1 ;;
    --follow) FOLLOW=1 ;;
    -h|--help) usage; exit 0 ;;
    --*=*) set_option "${1%%=*}" "${1#*=}" ;;
    --*) (($# >= 2)) || die "$1 needs a value"; set_option "$1" "$2"; shift ;;
    *) die "unexpected argument '$1' (overrides look like --config.rgrl.epochs=10; see --help)" ;;
  esac
  shift
done

((${#OVERRIDES[@]} == 0)) || [[ $SUBCOMMAND == run ]] || die "--config.* overrides are for run only"
((${#GRID_ARGS[@]} == 0)) || [[ $SUBCOMMAND == grid ]] || die "arguments after -- are for grid only"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number, not '$LINES'"
[[ $REMOTE_DIR != /* && $REMOTE_DIR != *' '* ]] || die "--remote-dir must be relative to the home directory, without spaces"

# --- accelerator types -------------------------------------------------------------------------------------------
TYPE_GIVEN=1
if [[ -z $TYPE ]]; then TYPE=v4-8; TYPE_GIVEN=0; fi

family() { echo "${1%-*}"; }

# Hosts (VMs) of a slice. Types are FAMILY-N: N counts TensorCores for v2, v3, v4 and v5p (8 per host) and chips
# for v5e and v6e (a single host has up to 8 chips; the hosts of larger slices have 4 each). So every family's
# largest single-host type is -8.
hosts_of() {
  local n=${1##*-}
  [[ $1 == *-* && $n =~ ^[0-9]+$ ]] || die "unrecognised accelerator type '$1' (e.g. v4-8, v4-32, v5litepod-8)"
  if ((n <= 8)); then echo 1; return; fi
  case $(family "$1") in
    v5litepod|v5e|v6e) echo $((n / 4)) ;;
    *) echo $((n / 8)) ;;
  esac
}

default_version() {
  case $(family "$1") in
    v2|v3|v4) echo tpu-ubuntu2204-base ;;
    v5litepod|v5e) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) die "no default --version for '$1'; give one (gcloud compute tpus tpu-vm versions list --zone=ZONE)" ;;
  esac
}

if [[ -z $ZONE ]]; then
  [[ $(family "$TYPE") == v4 ]] || die "give --zone for $TYPE (zones that have it: gcloud compute tpus accelerator-types list --zone=ZONE)"
  ZONE=us-central2-b
fi

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
[[ -z $PROJECT ]] || WHERE+=("--project=$PROJECT")

# The VM's real type, so that a pod slice is never started without --multihost (its hosts would then train
# independently, all writing to one workdir). Dry runs cannot ask and use --accelerator-type.
resolve_type() {
  if ((TYPE_GIVEN || DRY_RUN)); then return; fi
  TYPE=$("${GCLOUD_TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(acceleratorType)')
  TYPE=${TYPE##*/}
  [[ -n $TYPE ]] || die "could not read the accelerator type of $NAME; pass --accelerator-type"
}

ssh_workers() {  # WORKER COMMAND: COMMAND runs in the remote login shell, in the home directory.
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" "--worker=$1" "--command=$2"
}

# Starts SCRIPT on every worker, inside a detached tmux session, with all its output appended to LOG.
# `tmux new-session` refuses a second session of the same name, so a run still going is never started twice.
start_detached() {
  local log=$1 script=$2 inner remote
  inner="exec >> $(quote "$log") 2>&1; . .venv/bin/activate && $script; echo \"[tpu_vm.sh] exit status \$?\""
  remote="cd $(quote "$REMOTE_DIR") && mkdir -p logs"
  [[ $(dirname "$log") == logs ]] || remote+=" $(quote "$(dirname "$log")")"
  local target=$log
  [[ $target == /* ]] || target=../$log  # the link lives in logs/
  remote+=" && ln -sfn $(quote "$target") logs/latest.log"
  remote+=" && tmux new-session -d -s $(quote "$SESSION") -c \"\$PWD\" $(quote "$inner")"
  ssh_workers all "$remote"
  if ((!DRY_RUN)); then
    echo "Started in tmux session '$SESSION' on every worker of $NAME; log: $REMOTE_DIR/$log"
    echo "Follow it with: $0 logs --name=$NAME --zone=$ZONE --follow"
  fi
}

multihost_args() {  # prints --multihost for a multi-host slice, after checking that its workdir is shared
  local hosts
  hosts=$(hosts_of "$TYPE")
  if ((hosts > 1)); then
    [[ $1 == gs://* ]] || die "$TYPE has $hosts hosts: its workdir must be gs://BUCKET/PATH (every host reads and writes the checkpoints), not '$1'"
    echo --multihost
  fi
}

workdir_name() {  # a file-name-safe label of a workdir (its last path component)
  local base=${1%/}
  base=${base##*/}
  echo "${base//[^A-Za-z0-9._=+-]/_}"
}

# --- subcommands -------------------------------------------------------------------------------------------------
cmd_create() {
  ((SPOT + PREEMPTIBLE < 2)) || die "choose one of --spot and --preemptible"
  hosts_of "$TYPE" >/dev/null
  local version=$VERSION
  [[ -n $version ]] || version=$(default_version "$TYPE")
  local args=(create "$NAME" "${WHERE[@]}" "--accelerator-type=$TYPE" "--version=$version")
  ((SPOT)) && args+=(--spot)
  ((PREEMPTIBLE)) && args+=(--preemptible)
  run "${GCLOUD_TPU[@]}" "${args[@]}"
}

# The local checkout as a tarball: tracked and untracked files that git does not ignore (so no .venv, workdirs
# or caches), as they are in the working tree.
make_tarball() {
  local root=$1 tarball=$2
  if ((DRY_RUN)); then
    echo "git -C $(quote "$root") ls-files -z -co --exclude-standard | tar -czf $(quote "$tarball") -C $(quote "$root") --null -T -"
    return
  fi
  git -C "$root" ls-files -z -co --exclude-standard \
    | (cd "$root" && while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done) \
    | tar -czf "$tarball" -C "$root" --null -T -
}

cmd_setup() {
  [[ -n $REPO || $LOCAL == 1 ]] || die "setup needs --repo=URL (git clone on every worker) or --local (copy this checkout)"
  [[ -z $REPO || $LOCAL == 0 ]] || die "choose one of --repo and --local"
  local dir steps=() dataset
  dir=$(quote "$REMOTE_DIR")
  if ((LOCAL)); then
    local root tarball
    root=$(cd "$(dirname "$0")/.." && pwd)
    tarball=${TMPDIR:-/tmp}/rmdnet_jax_$$.tar.gz
    make_tarball "$root" "$tarball"
    run "${GCLOUD_TPU[@]}" scp "$tarball" "$NAME:rmdnet_jax_code.tar.gz" "${WHERE[@]}" --worker=all
    ((DRY_RUN)) || rm -f "$tarball"
    steps+=("mkdir -p $dir" "tar -xzf rmdnet_jax_code.tar.gz -C $dir" "rm rmdnet_jax_code.tar.gz")
  else
    local clone=(git clone)
    [[ -z $BRANCH ]] || clone+=(--branch "$BRANCH")
    clone+=("$REPO" "$REMOTE_DIR")
    local update="git -C $dir pull --ff-only"
    [[ -z $BRANCH ]] || update="git -C $dir fetch origin $(quote "$BRANCH") && git -C $dir checkout $(quote "$BRANCH") && $update"
    steps+=("if [ -d $dir/.git ]; then $update; else $(quote "${clone[@]}"); fi")
  fi
  local py
  py=$(quote "$PYTHON_EXE")
  steps+=(
    "cd $dir"
    # The pins need Python >= 3.11; Ubuntu 22.04 has python3.11 (with venv/ensurepip) in its universe archive.
    # The lock timeout waits for the unattended upgrades that a fresh VM runs at boot.
    "$py -c 'import ensurepip' 2>/dev/null || { sudo apt-get -q update && sudo apt-get -q install -y -o DPkg::Lock::Timeout=600 $py $py-venv; }"
    "[ -x .venv/bin/python ] || $py -m venv .venv"
    ".venv/bin/python -m pip install -q --upgrade pip"
    ".venv/bin/python -m pip install -q -r requirements.txt $(quote "$JAX_SPEC")"
  )
  if [[ $DATA != none && -n $DATA ]]; then
    local datasets
    IFS=, read -ra datasets <<< "$DATA"
    # Preparing needs TensorFlow (training does not): its CPU build, so it never claims the TPU.
    steps+=(".venv/bin/python -m pip install -q -r requirements-prepare.txt $(quote "$JAX_SPEC")")
    for dataset in "${datasets[@]}"; do
      # Each worker loads the data from its own disk (tfds' default ~/tensorflow_datasets, the configs' default).
      steps+=(".venv/bin/python -m rmdnet_jax.datasets.prepare_data --dataset=$(quote "$dataset")")
    done
  fi
  steps+=(".venv/bin/python -c 'import jax; print(\"jax\", jax.__version__)'")
  local script="set -e" step
  for step in "${steps[@]}"; do script+="; $step"; done
  ssh_workers all "$script"
}

cmd_run() {
  resolve_type
  local workdir=${WORKDIR:-workdirs/cifar10_rmdnet} multihost
  multihost=$(multihost_args "$workdir")
  local argv=(python -m rmdnet_jax.main "--config=$CONFIG" "--workdir=$workdir")
  [[ -z $multihost ]] || argv+=("$multihost")
  argv+=("${OVERRIDES[@]}")
  start_detached "${LOG:-logs/$(workdir_name "$workdir").log}" "$(quote "${argv[@]}")"
}

cmd_grid() {
  resolve_type
  local base=${WORKDIR:-workdirs/grid} multihost
  multihost=$(multihost_args "$base")
  local argv=(launch/grid.sh "--base=$base")
  [[ -z $multihost ]] || argv+=("$multihost")
  argv+=("${GRID_ARGS[@]}")
  start_detached "${LOG:-logs/grid.log}" "$(quote "${argv[@]}")"
}

cmd_logs() {
  local tail_args=(tail -n "$LINES")
  ((FOLLOW)) && tail_args+=(-F)
  tail_args+=("$REMOTE_DIR/${LOG:-logs/latest.log}")
  ssh_workers 0 "$(quote "${tail_args[@]}")"
}

cmd_copy_back() {
  local workdir=${WORKDIR:-workdirs/cifar10_rmdnet}
  local dest_dir=$DEST
  [[ $dest_dir == */ ]] || dest_dir+=/
  run mkdir -p "$DEST"
  if [[ $workdir == gs://* ]]; then
    run gsutil -m rsync -r "$workdir" "$dest_dir$(workdir_name "$workdir")"
  else
    local remote=$workdir
    [[ $remote == /* ]] || remote=$REMOTE_DIR/$remote
    run "${GCLOUD_TPU[@]}" scp --recurse "$NAME:${remote%/}" "$DEST" "${WHERE[@]}" --worker=0
  fi
}

cmd_delete() {
  run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}"
}

case $SUBCOMMAND in
  create) cmd_create ;;
  setup) cmd_setup ;;
  run) cmd_run ;;
  grid) cmd_grid ;;
  logs) cmd_logs ;;
  copy-back) cmd_copy_back ;;
  delete) cmd_delete ;;
esac
