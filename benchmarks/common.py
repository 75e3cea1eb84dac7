"""Helpers shared by the benchmarks: environment record, XLA cost analysis, timing, output files."""

import datetime
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import time
from typing import Any, Callable, Optional, Sequence

import jax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_int_list(text: str) -> list[int]:
  """'256,512' -> [256, 512]; blanks are ignored."""
  values = [int(v) for v in text.split(',') if v.strip()]
  if not values or any(v <= 0 for v in values):
    raise ValueError(f'Expected a comma-separated list of positive integers, got {text!r}.')
  return values


def parse_str_list(text: str, allowed: Sequence[str], name: str) -> list[str]:
  """'float32,bfloat16' -> ['float32', 'bfloat16'], refusing anything outside `allowed`."""
  values = [v.strip() for v in text.split(',') if v.strip()]
  unknown = [v for v in values if v not in allowed]
  if not values or unknown:
    raise ValueError(f'--{name}={text!r}: use a comma-separated subset of {", ".join(allowed)}.')
  return values


def parse_peak_tflops(text: Optional[str]) -> dict:
  """Peak dense TFLOP/s per chip, by compute dtype.

  '989' applies to every dtype; 'float32=495,bfloat16=989' gives one peak per dtype (a chip's float32 and
  bfloat16 peaks differ several-fold, so one number makes the float32 MFU meaningless). A dtype left out gets
  no MFU.
  """
  if not text:
    return {}
  if '=' not in text:
    return {'*': float(text)}
  peaks = {}
  for item in text.split(','):
    dtype, _, value = item.partition('=')
    peaks[dtype.strip()] = float(value)
  return peaks


def peak_for(peaks: dict, dtype: str) -> Optional[float]:
  return peaks.get(dtype, peaks.get('*'))


def cpu_model() -> str:
  """The host CPU's model name, from /proc/cpuinfo where there is one."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _load_average() -> Optional[float]:
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def _git_revision() -> dict:
  def git(*args):
    return subprocess.run(
        ('git', '-C', REPO_ROOT) + args, capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()

  try:
    return {'commit': git('rev-parse', 'HEAD') or None, 'dirty': bool(git('status', '--porcelain'))}
  except (OSError, subprocess.SubprocessError):
    return {'commit': None, 'dirty': None}


def _version(module_name: str) -> Optional[str]:
  try:
    module = __import__(module_name)
  except ImportError:
    return None
  return getattr(module, '__version__', None)


def host_environment(module: str, argv: Sequence[str]) -> dict:
  """The host, the date, the git revision and the command of a run; touches no JAX device.

  The PyTorch peer (`benchmarks.torch_peer`) records this part alone: initialising a JAX backend there would
  take the GPU memory the peer measures.

  Args:
    module: the benchmark's module name, e.g. 'benchmarks.throughput'.
    argv: the flags the benchmark parsed (recorded as the command that reproduces the run).
  """
  return {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'hardware': {
          'cpu_model': cpu_model(),
          'cpu_count': os.cpu_count(),
          # On a shared host other processes steal cores; the load at the start qualifies CPU timings.
          'load_average_1m_at_start': _load_average(),
      },
      'software': {'python': platform.python_version()},
      'git': _git_revision(),
      'command': ' '.join(['python', '-m', module] + list(argv)),
  }


def environment(module: str, argv: Sequence[str]) -> dict:
  """Hardware, software and provenance of a benchmark run, so that numbers are never quoted without them.

  Args:
    module: the benchmark's module name, e.g. 'benchmarks.throughput'.
    argv: the flags the benchmark parsed (recorded as the command that reproduces the run).
  """
  record = host_environment(module, argv)
  device = jax.local_devices()[0]
  record['hardware'] = {
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(),
      **record['hardware'],
  }
  record['software'].update(
      {
          'jax': jax.__version__,
          'jaxlib': _version('jaxlib'),
          'flax': _version('flax'),
          'optax': _version('optax'),
          'jax_threefry_partitionable': bool(jax.config.jax_threefry_partitionable),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
      }
  )
  return record


def peak_memory_bytes() -> Optional[int]:
  """Largest `peak_bytes_in_use` over the local devices, or None where the backend keeps no statistics (CPU).

  The allocator's peak cannot be reset, so this is the peak since the process started: benchmarks run their
  configurations from small to large so that each reading is (nearly) that configuration's own.
  """
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without statistics raise various errors
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def _flops_of(analysis) -> Optional[float]:
  if isinstance(analysis, (list, tuple)):  # older JAX returned one dict per partition
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def compile_with_flops(lowered) -> tuple[Any, dict]:
  """Compiles `lowered` and reads XLA's FLOP count of one execution (per device for SPMD programs).

  The compiled (optimised) module's count is preferred; where a backend reports none (an op XLA's cost model
  does not know), the count of the lowered module, before optimisation, is used. Both are recorded; on the
  CPU they agreed to 1% for the ResNet-18 CE step.

  Returns:
    (compiled, {'flops', 'flops_source', 'flops_compiled', 'flops_lowered'}).
  """
  try:
    flops_lowered = _flops_of(lowered.cost_analysis())
  except Exception:  # noqa: BLE001 - the analysis is optional; some backends do not implement it
    flops_lowered = None
  compiled = lowered.compile()
  try:
    flops_compiled = _flops_of(compiled.cost_analysis())
  except Exception:  # noqa: BLE001
    flops_compiled = None
  if flops_compiled is not None:
    flops, source = flops_compiled, 'xla_cost_analysis_compiled'
  else:
    flops, source = flops_lowered, 'xla_cost_analysis_lowered' if flops_lowered is not None else None
  return compiled, {
      'flops': flops,
      'flops_source': source,
      'flops_compiled': flops_compiled,
      'flops_lowered': flops_lowered,
  }


def time_repeats(run_once: Callable[[], Any], repeats: int) -> list[float]:
  """Wall-clock seconds of `repeats` calls of `run_once`, each ended by one `block_until_ready` of its result.

  `run_once` dispatches a whole repeat (many steps) and returns what to wait on; synchronising once per repeat,
  not per step, keeps the host's dispatch overlapped with device work, as in training.
  """
  times = []
  # Every input is on the devices before timing starts; the guard turns any implicit host<->device copy inside
  # the timed region (which would then be measured too) into an error instead of a silently wrong number.
  with jax.transfer_guard('disallow'):
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(run_once())
      times.append(time.perf_counter() - start)
  return times


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def write_outputs(out_dir: str, name: str, record: dict, markdown: str) -> tuple[str, str]:
  """Writes OUT/name.json and OUT/name.md; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, name + '.json')
  md_path = os.path.join(out_dir, name + '.md')
  with open(json_path, 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')
  with open(md_path, 'w') as f:
    f.write(markdown)
  return json_path, md_path


def environment_markdown(env: dict) -> str:
  """A few lines naming the hardware and software under a results table."""
  hw, sw = env['hardware'], env['software']
  lines = [
      f"- Hardware: {hw['device_count']} x {hw['device_kind']} ({hw['platform']}); host CPU {hw['cpu_model']}, "
      f"{hw['cpu_count']} cores (1-min load average {hw['load_average_1m_at_start']} at the start); "
      f"{hw['process_count']} process(es).",
      f"- Software: JAX {sw['jax']} (jaxlib {sw['jaxlib']}), Flax {sw['flax']}, Optax {sw['optax']}, "
      f"Python {sw['python']}; jax_threefry_partitionable={sw['jax_threefry_partitionable']}"
      + (f"; XLA_FLAGS={sw['xla_flags']!r}" if sw['xla_flags'] else '')
      + '.',
      f"- Date (UTC): {env['date_utc']}; git {env['git']['commit'] or 'unknown'}"
      + (' (uncommitted changes)' if env['git']['dirty'] else '')
      + '.',
  ]
  if env.get('command'):
    lines.append(f"- Command: `{env['command']}`")
  return '\n'.join(lines) + '\n'


def fmt(value: Optional[float], digits: int = 1) -> str:
  """Number for a markdown cell; '—' for missing values."""
  if value is None:
    return '—'
  return f'{value:,.{digits}f}'


def fmt_sig(value: Optional[float], digits: int = 4) -> str:
  """Number with `digits` significant digits (FLOP counts span many orders of magnitude); '—' if missing."""
  if value is None:
    return '—'
  return f'{value:.{digits}g}'


def fmt_pct(fraction: Optional[float]) -> str:
  """A fraction as a percentage: one decimal, or two significant digits below 0.1%; '—' if missing."""
  if fraction is None:
    return '—'
  percent = 100 * fraction
  return f'{percent:.1f}%' if abs(percent) >= 0.1 or percent == 0 else f'{percent:.2g}%'


def latest_trace_file(trace_dir: str) -> Optional[str]:
  """The newest `*.trace.json.gz` that `jax.profiler.trace(trace_dir)` wrote, or None."""
  paths = []
  for root, _, files in os.walk(trace_dir):
    paths += [os.path.join(root, f) for f in files if f.endswith('.trace.json.gz')]
  return max(paths, key=os.path.getmtime) if paths else None


def trace_top_ops(trace_dir: str, *, steps: int, top: int = 15, by_kind: bool = False) -> list[dict]:
  """The XLA ops that took the most time in the newest `jax.profiler` trace under `trace_dir`.

  Reads the trace-viewer JSON the profiler writes beside its XPlane file (stdlib only: no TensorBoard or xprof).
  An op event is one that names its HLO instruction (`args.hlo_op`: XLA:CPU thunks, GPU kernels); where a
  backend names none, the events of its device timelines (`/device:...` processes) are used. Times are
  inclusive: a while loop's or a call's event contains the ops of its body, so shares may add up to over 100%.

  Args:
    trace_dir: the directory given to `jax.profiler.trace`.
    steps: steps the trace covers, to give per-step times.
    top: how many ops to return.
    by_kind: add up the ops of one kind (the HLO name without its number: every `convolution.N`, every
      `transpose_copy_fusion.N`), which shows where the time goes when no single op dominates.

  Returns:
    Rows {'op', 'module', 'calls', 'total_ms', 'ms_per_step_per_device', 'share'}, slowest first; `share` is
    the op's part of all op time in the trace. Empty when the trace holds no op events.
  """
  path = latest_trace_file(trace_dir)
  if path is None:
    return []
  with gzip.open(path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  process_names = {
      e['pid']: e.get('args', {}).get('name', '')
      for e in events
      if e.get('ph') == 'M' and e.get('name') == 'process_name'
  }
  spans = [e for e in events if e.get('ph') == 'X' and 'dur' in e]
  ops = [e for e in spans if 'hlo_op' in e.get('args', {})]
  if not ops:
    ops = [e for e in spans if '/device:' in process_names.get(e['pid'], '')]
  totals, calls, devices = {}, {}, set()
  for e in ops:
    args = e.get('args', {})
    op = args.get('hlo_op', e['name'])
    key = (re.sub(r'\.\d+$', '', op) if by_kind else op, args.get('hlo_module', ''))
    totals[key] = totals.get(key, 0.0) + float(e['dur'])
    calls[key] = calls.get(key, 0) + 1
    devices.add((e['pid'], args.get('device_ordinal')))
  grand_total = sum(totals.values())
  rows = []
  for (op, module), micros in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    rows.append(
        {
            'op': op,
            'module': module,
            'calls': calls[(op, module)],
            'total_ms': micros / 1e3,
            'ms_per_step_per_device': micros / 1e3 / max(steps, 1) / max(len(devices), 1),
            'share': micros / grand_total if grand_total else None,
        }
    )
  return rows


def top_ops_markdown(rows: Sequence[dict]) -> str:
  """`trace_top_ops` rows as a markdown table."""
  lines = ['| op | HLO module | calls | ms/step/device | share |', '|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| `{r['op']}` | `{r['module']}` | {r['calls']} | {fmt(r['ms_per_step_per_device'], 3)} | "
        f"{fmt_pct(r['share'])} |"
    )
  return '\n'.join(lines)
