"""Start-up cost: wall time of importing a module in a fresh Python process, and whether it imports TensorFlow.

  python -m benchmarks.import_time [--module=rmdnet_jax.run.pipeline] [--repeats=5] [--repo=DIR] [--out=FILE.json]

`--repo` measures another checkout (e.g. an older commit in a `git worktree`) with this interpreter, so that two
versions are compared in one environment. Each repeat is a new process (`python -c "import MODULE"`), timed from
outside; the median is reported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROBE = (
    'import sys, time; t = time.perf_counter(); import {module}; '
    'print(time.perf_counter() - t, "tensorflow" in sys.modules)'
)


def measure(module: str, repeats: int, repo: str) -> dict:
  """{'seconds': [...], 'median_s': ..., 'imports_tensorflow': bool} for `repeats` fresh imports of `module`."""
  seconds, tensorflow = [], set()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  for _ in range(repeats):
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, '-c', PROBE.format(module=module)],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    seconds.append(time.perf_counter() - start)
    tensorflow.add(out[-1] == 'True')
  return {
      'module': module,
      'repo': os.path.abspath(repo),
      'seconds': seconds,
      'median_s': statistics.median(seconds),
      'imports_tensorflow': tensorflow == {True},
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.import_time', description=__doc__.split('\n')[0])
  parser.add_argument('--module', default='rmdnet_jax.run.pipeline')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--repo', default='.', help='the checkout whose module is imported [this one]')
  parser.add_argument('--out', help='write the result as JSON')
  args = parser.parse_args(argv)
  result = measure(args.module, args.repeats, args.repo)
  print(
      f"import {result['module']}: median {result['median_s']:.2f} s over {args.repeats} fresh processes "
      f"({'imports' if result['imports_tensorflow'] else 'does not import'} TensorFlow)"
  )
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
