#!/usr/bin/env bash
# launch/study_report.sh: the committed result files of the CPU study (docs/evidence.md) from its work directories.
#
# Usage: launch/study_report.sh BASE DATA_DIR [OUT]
#   BASE      the --base of `launch/grid.sh --grid=study` (its cells' work directories)
#   DATA_DIR  the tfds data_dir the study ran on
#   OUT       where the result files go [results/cpu_study]
#
# Writes OUT/runs/CELL/{config.json,results.json,metrics.jsonl} (small: no checkpoints), the teacher-geometry
# measurement of both teachers (OUT/teacher_geometry_epoch{5,20}.{json,md}), and, from OUT/runs alone, the per-run
# table (OUT/table.md) and the accuracy-vs-K figure (OUT/accuracy_vs_k.png). Run it from the repository root.
set -euo pipefail
(($# >= 2)) || { sed -n '3,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
base=${1%/} data_dir=$2 out=${3:-results/cpu_study}
python=${PYTHON:-python}

mkdir -p "$out/runs"
for dir in "$base"/study_*/; do
  cell=$(basename "$dir")
  [[ -f $dir/config.json ]] || continue
  mkdir -p "$out/runs/$cell"
  for file in config.json results.json metrics.jsonl; do
    [[ -f $dir/$file ]] && cp "$dir/$file" "$out/runs/$cell/"
  done
done
for epoch in 5 20; do
  "$python" -m rmdnet_jax.report.teacher_geometry --config=configs/cifar10_cpu_study.py \
    --config.data.data_dir="$data_dir" --config.relation.teacher_checkpoint="$base/study_simsiam/rm" \
    --config.relation.teacher_step=$((epoch * 32)) --out="$out/teacher_geometry_epoch$epoch.json" > /dev/null
done
"$python" -m rmdnet_jax.report.results "$out/runs/*" --per_run --all --markdown="$out/table.md" \
  --k_figure="$out/accuracy_vs_k.png" > /dev/null
echo "wrote $out/table.md, $out/accuracy_vs_k.png, $out/teacher_geometry_epoch{5,20}.md and $out/runs/"
