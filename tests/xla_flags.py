"""The XLA flags of every test process and of the runs tests start as child processes. No JAX import here: the
conftest sets them before JAX initialises.

Tests are dominated by XLA compile time, not run time: LLVM's optimisation level 0 halves it. (Tried and left out:
`--xla_cpu_use_fusion_emitters=false` halves it again but changes results beyond round-off, failing the colour
jitter and 8-vs-1-device SimSiam tests; `--xla_cpu_parallel_codegen_split_count=1` changes nothing measurable.)
"""

FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def with_devices(count: int) -> str:
  """XLA_FLAGS for a process with `count` fake CPU devices and the fast compiles."""
  return f'--xla_force_host_platform_device_count={count} {FAST_COMPILE}'
