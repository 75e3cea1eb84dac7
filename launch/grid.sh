#!/usr/bin/env bash
# launch/grid.sh: a grid of rmdnet_jax runs as a sequential queue on one machine (a TPU VM, or any host with the
# environment set up), each cell in its own work directory BASE/NAME, named after its settings. Run it from the
# repository root; on a TPU VM start it with `launch/tpu_vm.sh grid`, which runs it in tmux on every worker.
#
# Usage: launch/grid.sh [--grid=paper|methods|ablations|study] [--base=DIR] [--cells=FILE] [--seeds=0,1,2]
#                       [--python=EXE] [--log-dir=DIR] [--data-dir=DIR] [--multihost] [--list | --dry-run]
#
#   --grid=NAME     which built-in grid [paper]:
#                     paper      RMDNet and CE, the table below (66 cells for 3 seeds)
#                     methods    every method of rmdnet_jax.methods alone and + RMDNet, on every noise setting of
#                                configs/noisy_cifar.py (synthetic and CIFAR-N), both datasets
#                     ablations  CIFAR-10 sym50 RMDNet: node only, edge only, K in 0.1/0.5/2/5, projector
#                                teacher layer, kl and mse edge losses, cosine node loss
#                     study      the CPU study (configs/cifar10_cpu_study.py, docs/evidence.md): one SimSiam
#                                run whose epoch-5 and epoch-20 checkpoints are two teachers, CE, RMDNet at
#                                K 0.1/0.3/1 with each teacher, the node-matching forms and the per_node scale
#   --base=DIR      parent of the cells' work directories; gs://bucket/path is passed through [workdirs/grid]
#   --cells=FILE    the cells to run, one per line (format below) [the default grid]
#   --seeds=LIST    seeds of the default grid, comma-separated [0,1,2]
#   --python=EXE    interpreter that runs rmdnet_jax.main [python, i.e. the active environment's]
#   --log-dir=DIR   each cell's output goes to DIR/NAME.log, appended [logs/grid]
#   --data-dir=DIR  add --config.data.data_dir=DIR to every cell (a prepared tfds data_dir) [none]
#   --multihost     pass --multihost to every run (a pod slice; launch/tpu_vm.sh grid adds it)
#   --list          print the cells in the cells-file format (edit the output and pass it back with --cells)
#   --dry-run       print the command of every cell instead of running it
#   --help          show this text
#
# The default grid is the RMDNet results table: CIFAR-10 and CIFAR-100, RMDNet (configs/cifar*_rmdnet.py) and its
# CE baseline (the same config with --config.method.distill=False), at symmetric 20/50/80%, asymmetric 40% and
# pairflip 45% noise, over seeds 0, 1, 2 (--config.seed and --config.noise.seed): 60 cells, ordered seed by seed,
# so that one complete table is ready first. Two things keep it from training what it does not need to:
#   * the SimSiam teacher (RM stage, 800 epochs: most of an RMDNet run) never sees a label, so one teacher cell per
#     dataset and seed (DATASET_simsiam_sSEED, --config.stages=rm) serves all five noise settings, whose RMDNet
#     cells run --config.stages=rgrl with --config.relation.teacher_checkpoint=BASE/DATASET_simsiam_sSEED/rm.
#     That is 6 teacher cells instead of 30 SimSiam runs, with the same results: the RM stage depends only on
#     --config.seed, the data and the model;
#   * the CE baseline needs no teacher, so its cells run --config.stages=rgrl only.
# So 66 cells in all. A cell that names BASE/OTHER/ of a cell that failed in this queue is skipped.
#
# Cells file: one cell per line, `[NAME] CONFIG [--config.KEY=VALUE ...]`. Words are split as a shell would
# (quotes and backslashes work; nothing is expanded); `{base}` stands for --base; blank lines and lines starting
# with # are skipped. Without NAME, the name is CONFIG's file name and the overrides, e.g.
# cifar10_rmdnet+noise.rate=0.2+seed=1 (characters other than letters, digits and ._=+- become _). Names
# must be unique.
#
# Rerunning the same command resumes the queue: a finished stage is skipped in seconds, an interrupted one continues
# from its checkpoint (see docs/reliability.md, "Resuming"). The exit status is 1 when a cell failed or was skipped.
#
# A cell that exits with status 75 (rmdnet_jax.main's "preempted": it got SIGTERM, checkpointed and stopped) is not
# a failure: the queue stops there, since the machine is going away, and exits with 75 too. Rerunning the same
# command resumes that cell from its checkpoint, then runs the rest.
#
# Examples:
#   launch/grid.sh --list                                     # the 66 cells
#   launch/grid.sh --dry-run --base=gs://BUCKET/grid          # their commands
#   launch/grid.sh --list --seeds=0 > cells.txt && launch/grid.sh --cells=cells.txt --base=workdirs/seed0
set -euo pipefail

die() { echo "grid.sh: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  die "needs bash 4.4 or newer (this is $BASH_VERSION); on macOS: brew install bash"
fi
shopt -s inherit_errexit

quote() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }

BASE=workdirs/grid
GRID=paper
CELLS_FILE=''
SEEDS=0,1,2
PYTHON_EXE=python
LOG_DIR=logs/grid
DATA_DIR=''
MULTIHOST=0
LIST=0
DRY_RUN=0

set_option() {
  case $1 in
    --base) BASE=$2 ;;
    --grid) GRID=$2 ;;
    --cells) CELLS_FILE=$2 ;;
    --seeds) SEEDS=$2 ;;
    --python) PYTHON_EXE=$2 ;;
    --log-dir) LOG_DIR=$2 ;;
    --data-dir) DATA_DIR=$2 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
}

while (($#)); do
  case $1 in
    --multihost) MULTIHOST=1 ;;
    --list) LIST=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --*=*) set_option "${1%%=*}" "${1#*=}" ;;
    --*) (($# >= 2)) || die "$1 needs a value"; set_option "$1" "$2"; shift ;;
    *) die "unexpected argument '$1' (see --help)" ;;
  esac
  shift
done
BASE=${BASE%/}
[[ -n $BASE ]] || die "--base is empty"
[[ $GRID =~ ^(paper|methods|ablations|study)$ ]] || die "--grid must be paper, methods, ablations or study, not '$GRID'"
[[ -f rmdnet_jax/main.py ]] || die "run me from the repository root (the configs and work directories are relative to it)"

# --- the cells ---------------------------------------------------------------------------------------------------
default_cells() {
  local seed dataset config teacher noise kind rate label common seeds
  local noises=(symmetric:0.2:sym20 symmetric:0.5:sym50 symmetric:0.8:sym80 asymmetric:0.4:asym40 pairflip:0.45:pairflip45)
  IFS=, read -ra seeds <<< "$SEEDS"
  for seed in "${seeds[@]}"; do
    [[ $seed =~ ^[0-9]+$ ]] || die "--seeds must be comma-separated integers, not '$SEEDS'"
    for dataset in cifar10 cifar100; do
      config=configs/${dataset}_rmdnet.py
      teacher=${dataset}_simsiam_s$seed
      echo "$teacher $config --config.stages=rm --config.seed=$seed"
      for noise in "${noises[@]}"; do
        IFS=: read -r kind rate label <<< "$noise"
        common="--config.noise.kind=$kind --config.noise.rate=$rate --config.seed=$seed --config.noise.seed=$seed"
        echo "${dataset}_rmdnet_${label}_s$seed $config --config.stages=rgrl" \
             "--config.relation.teacher_checkpoint={base}/$teacher/rm $common"
        echo "${dataset}_ce_${label}_s$seed $config --config.method.distill=False --config.stages=rgrl $common"
      done
    done
  done
}

# The grids of configs/noisy_cifar.py cells: the teacher of each dataset and seed first, then the cells that use it.
METHODS=(ce gce sce coteaching jocor elr dividemix)
NOISES_cifar10=(sym20 sym50 sym80 sym90 asym40 pair45 inst20 inst40 c10n_aggre c10n_random1 c10n_random2
                c10n_random3 c10n_worst)
NOISES_cifar100=(sym20 sym50 sym80 sym90 asym40 pair45 inst20 inst40 c100n_noisy)
noisy_cifar_teacher() {  # DATASET SEED
  echo "$1_simsiam_s$2 configs/noisy_cifar.py:dataset=$1,seed=$2 --config.stages=rm"
}
noisy_cifar_cell() {  # NAME DATASET NOISE METHOD RMDNET SEED [OVERRIDE...]
  local name=$1 dataset=$2 noise=$3 method=$4 rmdnet=$5 seed=$6
  shift 6
  local line="$name configs/noisy_cifar.py:dataset=$dataset,noise=$noise,method=$method,rmdnet=$rmdnet,seed=$seed"
  line+=" --config.stages=rgrl"
  [[ $rmdnet == true ]] && line+=" --config.relation.teacher_checkpoint={base}/${dataset}_simsiam_s$seed/rm"
  (($#)) && line+=" $*"
  echo "$line"
}
check_seeds() {
  local seed
  for seed in "$@"; do [[ $seed =~ ^[0-9]+$ ]] || die "--seeds must be comma-separated integers, not '$SEEDS'"; done
}
methods_cells() {
  local seeds seed dataset noise method rmdnet tag noises
  IFS=, read -ra seeds <<< "$SEEDS"
  check_seeds "${seeds[@]}"
  for seed in "${seeds[@]}"; do
    for dataset in cifar10 cifar100; do
      noisy_cifar_teacher "$dataset" "$seed"
      noises="NOISES_$dataset[@]"
      for noise in "${!noises}"; do
        for method in "${METHODS[@]}"; do
          for rmdnet in true false; do
            tag=$method; [[ $rmdnet == true ]] && tag+=_rmdnet
            noisy_cifar_cell "${dataset}_${noise}_${tag}_s$seed" "$dataset" "$noise" "$method" "$rmdnet" "$seed"
          done
        done
      done
    done
  done
}
ablation_cells() {
  local seeds seed variant name overrides
  local variants=("node_only --config.relation.edge_weight=0.0" "edge_only --config.relation.node_weight=0.0"
                  "K0.1 --config.relation.K=0.1" "K0.5 --config.relation.K=0.5" "K2 --config.relation.K=2.0"
                  "K5 --config.relation.K=5.0" "teacher_projector --config.relation.teacher_layer=projector"
                  "edge_kl --config.relation.edge_kind=kl" "edge_mse --config.relation.edge_kind=mse"
                  "node_cosine --config.relation.node_kind=cosine")
  IFS=, read -ra seeds <<< "$SEEDS"
  check_seeds "${seeds[@]}"
  for seed in "${seeds[@]}"; do
    noisy_cifar_teacher cifar10 "$seed"
    noisy_cifar_cell "cifar10_sym50_ce_rmdnet_s$seed" cifar10 sym50 ce true "$seed"
    for variant in "${variants[@]}"; do
      read -r name overrides <<< "$variant"
      noisy_cifar_cell "cifar10_sym50_ce_rmdnet_${name}_s$seed" cifar10 sym50 ce true "$seed" "$overrides"
    done
  done
}

# The CPU study (docs/evidence.md). Teachers: the RM run's checkpoints at epoch 5 (step 160) and 20 (step 640, its
# last); 4,096 images / batch 128 = 32 steps per epoch.
study_cells() {
  local config=configs/cifar10_cpu_study.py rgrl="--config.stages=rgrl"
  local teacher="--config.relation.teacher_checkpoint={base}/study_simsiam/rm" epoch step k form name overrides
  echo "study_simsiam $config --config.stages=rm --config.max_to_keep=40"
  echo "study_ce $config --config.method.distill=False $rgrl"
  for epoch in 20 5; do
    step=$((epoch * 32))
    for k in 1 0.1 0.3; do
      echo "study_t${epoch}_K$k $config $rgrl $teacher --config.relation.teacher_step=$step --config.relation.K=$k"
    done
  done
  # The node-matching forms (docs/evidence.md: what avoids the collapse), with the stronger teacher at K = 1.
  for form in "node_cosine --config.relation.node_kind=cosine" "batch_center --config.relation.batch_center=True" \
              "teacher_projector --config.relation.teacher_layer=projector"; do
    read -r name overrides <<< "$form"
    echo "study_t20_K1_$name $config $rgrl $teacher --config.relation.teacher_step=640 --config.relation.K=1 $overrides"
  done
  echo "study_t5_K1_node_cosine $config $rgrl $teacher --config.relation.teacher_step=160 --config.relation.K=1" \
       "--config.relation.node_kind=cosine"
  # The batch-invariant scale: at batch 256 the unnormalised terms are twice as large as at 128 for the same K;
  # per_node with K' = 128 K is the batch-128 regulariser at any batch. The best K of the epoch-5 teacher, 0.1.
  local b256="--config.rgrl.batch_size=256"
  echo "study_ce_b256 $config --config.method.distill=False $rgrl $b256"
  echo "study_t5_K0.1_b256 $config $rgrl $teacher --config.relation.teacher_step=160 --config.relation.K=0.1 $b256"
  echo "study_t5_K12.8_per_node_b256 $config $rgrl $teacher --config.relation.teacher_step=160" \
       "--config.relation.K=12.8 --config.relation.normalize=per_node $b256"
}

NAMES=()         # cell names, in queue order
ARGS=()          # each cell's CONFIG and overrides, as one quote()d string (eval turns it back into words)
declare -A SEEN=()

# The words of one cells-file line. xargs splits like a shell (quotes, backslashes) but, unlike eval, never runs
# anything that is in the file.
add_cell() {
  local line=$1 where=$2 words=() name config override
  mapfile -d '' -t words < <(printf '%s\n' "$line" | xargs printf '%s\0')
  wait $! || die "$where: cannot split '$line' into words (unbalanced quotes?)"
  ((${#words[@]})) || return 0
  if [[ ${words[0]} == *.py || ${words[0]} == *.py:* ]]; then
    name=$(basename "${words[0]%%:*}" .py)
    [[ ${words[0]} == *.py:* ]] && name+=+${words[0]#*.py:}
    for override in "${words[@]:1}"; do name+=+${override#--config.}; done
    name=${name//[^A-Za-z0-9._=+-]/_}
  else
    name=${words[0]}
    words=("${words[@]:1}")
  fi
  ((${#words[@]})) && [[ ${words[0]} == *.py || ${words[0]} == *.py:* ]] ||
    die "$where: expected [NAME] CONFIG.py[:PARAMS] [--config.KEY=VALUE ...], got '$line'"
  config=${words[0]}
  for override in "${words[@]:1}"; do
    [[ $override == --config.?*=* ]] || die "$where: '$override' is not a --config.KEY=VALUE override"
  done
  [[ $name =~ ^[A-Za-z0-9._=+-]+$ ]] || die "$where: cell name '$name' may only have letters, digits and ._=+-"
  [[ -z ${SEEN[$name]:-} ]] || die "$where: cell name '$name' is used twice (${SEEN[$name]}); names must be unique"
  SEEN[$name]=$where
  NAMES+=("$name")
  ARGS+=("$(quote "$config" "${words[@]:1}")")
}

if [[ -n $CELLS_FILE ]]; then
  [[ -f $CELLS_FILE ]] || die "no cells file $CELLS_FILE"
  lineno=0
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    add_cell "$line" "$CELLS_FILE:$lineno"
  done < "$CELLS_FILE"
else
  lineno=0
  while IFS= read -r line; do
    lineno=$((lineno + 1))
    add_cell "$line" "$GRID cell $lineno"
  done < <(case $GRID in
             paper) default_cells ;;
             methods) methods_cells ;;
             ablations) ablation_cells ;;
             study) study_cells ;;
           esac)
fi
((${#NAMES[@]})) || die "no cells to run"

if ((LIST)); then
  # quote() escapes the braces of {base}; the cells-file reader does not need that.
  for i in "${!NAMES[@]}"; do line="${NAMES[i]} ${ARGS[i]}"; echo "${line//\\\{base\\\}/\{base\}}"; done
  exit 0
fi

# --- the queue ---------------------------------------------------------------------------------------------------
# A stop (Ctrl-C, tmux kill-session, SIGTERM of a preempted VM) stops the queue, not just the cell that is running.
trap 'echo "[grid] stopped by a signal"; exit 143' TERM INT HUP

((DRY_RUN)) || mkdir -p "$LOG_DIR"
failed=()
total=${#NAMES[@]}
PREEMPTED=75  # rmdnet_jax.training.loop.PREEMPTED_EXIT_CODE (EX_TEMPFAIL)
for i in "${!NAMES[@]}"; do
  name=${NAMES[i]}
  eval "words=(${ARGS[i]})"
  argv=("$PYTHON_EXE" -m rmdnet_jax.main "--config=${words[0]}" "--workdir=$BASE/$name")
  ((MULTIHOST)) && argv+=(--multihost)
  [[ -n $DATA_DIR ]] && argv+=("--config.data.data_dir=$DATA_DIR")
  for override in "${words[@]:1}"; do argv+=("${override//\{base\}/$BASE}"); done
  log=$LOG_DIR/$name.log
  if ((DRY_RUN)); then
    echo "$(quote "${argv[@]}") >> $(quote "$log") 2>&1"
    continue
  fi
  blocked=''
  for other in "${failed[@]}"; do
    for word in "${argv[@]}"; do
      [[ $word == *"$BASE/$other/"* ]] && blocked=$other
    done
  done
  progress="[$(date -u +%FT%TZ)] [$((i + 1))/$total] $name"
  if [[ -n $blocked ]]; then
    echo "$progress: skipped, it needs $blocked, which failed"
    failed+=("$name")
    continue
  fi
  echo "$progress: started, log $log"
  status=0
  "${argv[@]}" >> "$log" 2>&1 || status=$?
  if ((status == 0)); then
    echo "[$(date -u +%FT%TZ)] [$((i + 1))/$total] $name: done"
  elif ((status == PREEMPTED)); then
    echo "[$(date -u +%FT%TZ)] [$((i + 1))/$total] $name: preempted (checkpoint saved), to resume: rerun this command"
    echo "[grid] stopped at $name, preempted; ${#failed[@]} earlier cells failed or were skipped"
    exit "$PREEMPTED"
  else
    echo "[$(date -u +%FT%TZ)] [$((i + 1))/$total] $name: FAILED (exit status $status), see $log"
    failed+=("$name")
  fi
done

((DRY_RUN)) && exit 0
if ((${#failed[@]})); then
  echo "[grid] ${#failed[@]} of $total cells failed or were skipped: ${failed[*]}"
  exit 1
fi
echo "[grid] all $total cells done; results in $BASE/*/results.json"
