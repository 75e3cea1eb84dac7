#!/usr/bin/env bash
# launch/ladder_report.sh: the committed result files of the teacher-quality ladder (README, "Evidence") from its
# work directories.
#
# Usage: launch/ladder_report.sh BASE [OUT]
#   BASE  the --base of the ladder's queues (results/ladder/cells.txt and simsiam_cells.txt)
#   OUT   where the result files go [results/ladder]
#
# Writes OUT/runs/CELL/{config.json,results.json,metrics.jsonl} (small: no checkpoints) and, from OUT/runs alone,
# the ladder's table (OUT/table.md), its figure (OUT/ladder.png) and every number per run (OUT/wide.md). Run it from
# the repository root.
set -euo pipefail
(($# >= 1)) || { sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
base=${1%/} out=${2:-results/ladder}
python=${PYTHON:-python}

mkdir -p "$out/runs"
for dir in "$base"/*/; do
  cell=$(basename "$dir")
  [[ -f $dir/results.json ]] || continue  # finished runs only
  mkdir -p "$out/runs/$cell"
  for file in config.json results.json metrics.jsonl; do
    [[ -f $dir/$file ]] && cp "$dir/$file" "$out/runs/$cell/"
  done
done
"$python" -m rmdnet_jax.report.results --ladder "$out/runs" --markdown="$out/table.md" --figure="$out/ladder.png" \
  --wide="$out/wide.md" > /dev/null
echo "wrote $out/table.md, $out/ladder.png, $out/wide.md and $out/runs/"
