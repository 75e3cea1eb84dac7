"""Entry point: python -m rmdnet_jax.main --config=configs/cifar10_rmdnet.py --workdir=DIR [--config.x.y=v].

Kept short on purpose (as flax examples/imagenet): everything else is importable by tests and notebooks.
"""
import logging as py_logging
import os
import sys

# TensorFlow is imported by tfds/clu; hide accelerators from it so it never reserves GPU memory JAX needs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rmdnet_jax import checkpoints, config_checks, data, loop, pipeline  # noqa: E402

# Per-example keys are never sharded, so the partitionable threefry buys nothing here, and on CPU it makes every
# random op compile ~10x slower. Fixed for every run so that numbers stay comparable.
jax.config.update('jax_threefry_partitionable', False)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, noisy labels, metrics and results.')
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (TPU pod slices, multi-node GPU).')
flags.mark_flags_as_required(['config', 'workdir'])


USER_ERRORS = (config_checks.ConfigError, data.DataUnavailableError, checkpoints.CheckpointError,
               pipeline.WorkdirConfigMismatch, loop.NonFiniteLossError, pipeline.WorkdirError)


def _quiet_orbax(record) -> bool:
  # Orbax logs every save/load phase at INFO; keep its warnings and errors, drop the rest from the console.
  return record.levelno >= py_logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}; overrides look like --config.rgrl.epochs=10.')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if FLAGS.multihost:
    jax.distributed.initialize()  # before any other JAX call
  try:
    import tensorflow as tf  # noqa: PLC0415
    tf.config.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    pipeline.run(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    # These carry one sentence that says what is wrong and how to fix it; a traceback would only bury it.
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
