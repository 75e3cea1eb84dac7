"""The XLA flags of every test process and of the runs tests start as child processes. No JAX import here: the
conftest sets them before JAX initialises.

Tests are dominated by XLA compile time, not run time: LLVM's optimisation level 0 halves it.

XLA:CPU's older loop emitters (`--xla_cpu_use_fusion_emitters=false`) compile in about half the time again (the
suite: 340 s instead of 512 s, measured on a 2-core VM), but their numbers differ from the default emitters' by more
than round-off: under them the colour-jitter-against-numpy, 8-vs-1-device SimSiam and resident-vs-host-batches
tests fail. So the test processes, which hold the comparisons against numpy and across device counts, compile with
XLA's default emitters, and only the runs the tests start as child processes (`python -m rmdnet_jax.main` through
the CLI, the 2-process runs) use the older ones: those tests check what a run does (exit statuses, files, console,
preemption and resume) and compare a child's numbers only with another child's, compiled the same way. The older
emitters are gone from jaxlib 0.11 on (XLA refuses the flag and the process stops), so the children use them only
on the jaxlib 0.10 of the pinned set; on a newer stack (an accelerator image's) they compile as the test processes.
(`--xla_cpu_parallel_codegen_split_count=1` changes nothing measurable.)
"""

import importlib.metadata


def _has_older_emitters() -> bool:
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return False
  return tuple(int(part) for part in version.split('.')[:2]) < (0, 11)


FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
CHILD_RUNS = f'{FAST_COMPILE} --xla_cpu_use_fusion_emitters=false' if _has_older_emitters() else FAST_COMPILE


def with_devices(count: int, flags: str = FAST_COMPILE) -> str:
  """XLA_FLAGS for a process with `count` fake CPU devices and `flags` (the test processes' fast compiles)."""
  return f'--xla_force_host_platform_device_count={count} {flags}'
