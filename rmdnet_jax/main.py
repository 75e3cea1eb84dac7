"""Entry point: python -m rmdnet_jax.main --config=configs/cifar10_rmdnet.py --workdir=DIR [--config.x.y=v].

Kept short on purpose (as flax examples/imagenet): everything else is importable by tests and notebooks.
"""

import os
import re
import sys

# TensorFlow is imported by tfds/clu; hide accelerators from it so it never reserves GPU memory JAX needs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Only what parsing the flags and the config needs is imported here: JAX, Orbax and the stages come in main(),
# after the flags parsed, so that a mistyped flag or --config key is refused in ~1 s instead of ~5 s.
from rmdnet_jax.run import config_files  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, noisy labels, metrics and results.')
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_bool(
    'multihost',
    False,
    'One of several processes (TPU pod slice, multi-node GPU): join the others with '
    'jax.distributed.initialize(), which finds them on TPU, SLURM and Open MPI by itself.',
)
flags.DEFINE_string(
    'coordinator_address',
    None,
    'With --multihost where the cluster is not detected: HOST:PORT of process 0, the same on every '
    'process (default: $JAX_COORDINATOR_ADDRESS).',
)
flags.DEFINE_integer(
    'num_processes',
    None,
    'With --multihost where the cluster is not detected: the number of processes ' '(default: $JAX_NUM_PROCESSES).',
)
flags.DEFINE_integer(
    'process_id',
    None,
    "With --multihost where the cluster is not detected: this process's index, 0 to "
    'num_processes - 1 (default: $JAX_PROCESS_ID).',
)
flags.mark_flags_as_required(['config', 'workdir'])


def _config_flag_error(argv, error: Exception) -> str:
  """One sentence for a --config or --config.KEY=VALUE flag that cannot be applied."""
  config_arg = next((a for a in argv if a.startswith('--config=')), None)
  if config_arg is not None:
    path = config_arg[len('--config=') :].split(':', 1)[0]
    if not os.path.isfile(path):
      return (
          f'{config_arg} names no config file; pass one that exists, such as --config=configs/tiny.py '
          '(docs/configs.md lists them).'
      )
  if isinstance(error, (KeyError, AttributeError)):
    renamed = config_files.renamed_override_message(argv)
    if renamed:
      return renamed
    # ml_collections raises KeyError("'key'"), possibly wrapped in an AttributeError and followed by a line
    # 'Did you mean "other" instead of "key"?', or, below a value, "Attribute <class 'int'>.key does not exist ...".
    message = error
    while isinstance(message, BaseException) and message.args:
      message = message.args[0]
    message = str(message)
    below_value = re.search(r"Attribute <class '(\w+)'>\.(\w+) does not exist.*lookup: (\S+)", message, re.S)
    if below_value:
      kind, key, path = below_value.groups()
      parent = path.rsplit('.', 1)[0]
      return (
          f'--config.{path}: config.{parent} is a value ({kind}), not a section with a key {key!r}; '
          'configs/default.py lists every key (overrides look like --config.rgrl.epochs=10).'
      )
    named = re.search(r"'([^']+)'", message)
    key = named.group(1) if named else message.strip('\'"')
    suggested = re.search(r'Did you mean "([^"]+)"', message)
    override = next(
        (a for a in argv if a.startswith('--config.') and key in a.split('=', 1)[0].split('.')), f'--config...{key}'
    )
    hint = f' (did you mean {suggested.group(1)!r}?)' if suggested else ''
    return (
        f'{override.split("=", 1)[0]}: the config has no key {key!r}{hint}; configs/default.py lists every key '
        '(overrides look like --config.rgrl.epochs=10).'
    )
  if isinstance(error, flags.Error):
    lines = [line for line in str(error).splitlines() if line.strip()]
    if any(line.startswith('Traceback') for line in lines):  # the config file itself raised: keep its last word
      return f'{lines[0].rstrip(":")} ({lines[-1]}); fix the config file.'
    return f'{error}; fix that flag (python -m rmdnet_jax.main --helpfull lists the flags).'
  detail = ' '.join(str(error).split())
  return (
      f'the config {config_arg or ""} could not be loaded ({type(error).__name__}: {detail[:300]}); fix the '
      'config file or the override.'
  )


def parse_flags(argv):
  """absl's flag parsing, plus loading the config file and applying its overrides now (config_flags does it on
  first use), so that a bad --config or --config.KEY=VALUE is one sentence, not a traceback."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # loads the file and applies the overrides (a failed load raises on first use)
  except Exception as e:  # noqa: BLE001  config_flags raises KeyError, AttributeError, OSError, ValueError...
    sys.exit(f'error: {_config_flag_error(argv, e)}')
  return rest


def _env_int(name: str):
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    sys.exit(f'error: ${name}={value!r} is not an integer; set it to a whole number or unset it.')


def initialize_distributed() -> None:
  """jax.distributed.initialize() with the explicit address, count and id where given (flags, else JAX_* env
  variables), else auto-detection (TPU pod, SLURM, Open MPI)."""
  import jax  # noqa: PLC0415

  address = FLAGS.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = FLAGS.num_processes if FLAGS.num_processes is not None else _env_int('JAX_NUM_PROCESSES')
  process_id = FLAGS.process_id if FLAGS.process_id is not None else _env_int('JAX_PROCESS_ID')
  # The loop agrees on a stopping step itself (loop._SigtermFlag); JAX's preemption service would take SIGTERM.
  jax.config.update('jax_enable_preemption_service', False)
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes, process_id=process_id)
  except (ValueError, TypeError) as e:
    sys.exit(
        f'error: --multihost could not find the other processes ({e}); on a cluster JAX does not detect '
        '(TPU pod, SLURM, Open MPI), pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I '
        'on every process.'
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}; overrides look like --config.rgrl.epochs=10.')
  import jax  # noqa: PLC0415  (after the flags: see the imports above)

  from rmdnet_jax.datasets import data, noise  # noqa: PLC0415
  from rmdnet_jax.run import pipeline, workdir  # noqa: PLC0415
  from rmdnet_jax.training import checkpoints, config_checks, loop  # noqa: PLC0415

  # Per-example keys are never sharded, so the partitionable threefry buys nothing here, and on CPU it makes every
  # random op compile ~10x slower. Fixed for every run so that numbers stay comparable.
  jax.config.update('jax_threefry_partitionable', False)
  # These carry one sentence that says what is wrong and how to fix it; a traceback would only bury it.
  user_errors = (
      config_checks.ConfigError,
      data.DataUnavailableError,
      checkpoints.CheckpointError,
      loop.NonFiniteLossError,
      noise.NoisyLabelsFileError,
      noise.NoisyLabelsMismatch,
      workdir.WorkdirConfigMismatch,
      workdir.WorkdirError,
  )
  checkpoints.quiet_orbax_logging()
  loop.install_sigterm_handler()
  if FLAGS.multihost or FLAGS.coordinator_address or FLAGS.num_processes is not None or FLAGS.process_id is not None:
    initialize_distributed()  # before any other JAX call
  if 'tensorflow' in sys.modules:
    # Training never imports TensorFlow; if something did (a full TensorFlow build installed for preparing data),
    # keep it off the GPUs JAX needs.
    sys.modules['tensorflow'].config.set_visible_devices([], 'GPU')
  # A count and a kind, not every device's repr: 8 of them make one long line on a terminal.
  devices = jax.local_devices()
  logging.info(
      'JAX process %d/%d: %d local %s devices.',
      jax.process_index(),
      jax.process_count(),
      len(devices),
      devices[0].device_kind,
  )
  try:
    pipeline.run(FLAGS.config, FLAGS.workdir)
  except user_errors as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  except loop.Preempted as e:
    # Not a failure: the checkpoint is written; a queue (launch/grid.sh) reruns or resumes the cell.
    logging.warning('%s', e)
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(loop.PREEMPTED_EXIT_CODE)


def cli():
  """The `rmdnet-train` command (= python -m rmdnet_jax.main); --config=configs/NAME.py also finds the installed
  package's configs when the current directory has none."""
  config_files.resolve_sys_argv()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  cli()
