"""Orbax checkpoints: one `CheckpointManager` per stage (WORKDIR/rm, WORKDIR/rgrl), and the RM -> RGRL hand-off.

Each checkpoint holds two items: `state` (the whole train state: params, BatchNorm statistics, optimizer state,
step) and `meta` (JSON: what the state was trained on, and `state_sha256`, a digest of the state's bytes). Orbax
writes to a temporary directory and renames it when complete, so an interrupted save never leaves a half checkpoint
that a resume could pick up. A checkpoint damaged later (truncated files, a lost manifest or metadata, bytes that
changed) is found on restore: the digest is checked, and a resume falls back to the newest intact checkpoint.

Any number of processes: the train state lives as host-local replicated arrays (`parallel.pmap_step`'s layout);
`save` turns them into global arrays for Orbax (one copy is written) and `restore` reads onto all devices and back
to host-local copies. The saved files do not depend on the process or device count, so a run saved by N processes
resumes on M (the same global batch over another number of devices).
"""

import functools
import hashlib
import logging as py_logging
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rmdnet_jax import fileio, methods
from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data

# What must agree between an RM checkpoint and the RGRL run that uses it as a teacher.
TEACHER_KEYS = (
    'stage',
    'dataset',
    'model',
    'width',
    'projector_dim',
    'projector_layers',
    'predictor_dim',
    'image_shape',
)
# What must agree between a checkpoint and the run resuming (or analysing) it.
STATE_KEYS = TEACHER_KEYS + ('student', 'student_width', 'method')


# Orbax warnings that say nothing to a user: a teacher (and an analysed run) is read through a read-only manager
# (`manager(..., read_only=True)`), on purpose, and Orbax warns about that each time.
ORBAX_WARNINGS_DROPPED = (
    'Given directory is read only',
    'CheckpointManagerOptions.read_only=True',
)


def quiet_orbax_logging() -> None:
  """Drops Orbax's INFO records (one per save/load phase) and its ORBAX_WARNINGS_DROPPED from the console; its
  other warnings and errors stay."""

  def keep(record) -> bool:
    if 'orbax' not in record.pathname:
      return True
    # Python's level (30): absl's logging.WARNING is its verbosity number (-1), which every record would pass.
    if record.levelno < py_logging.WARNING:
      return False
    return record.levelno > py_logging.WARNING or not any(
        text in record.getMessage() for text in ORBAX_WARNINGS_DROPPED
    )

  logging.get_absl_handler().addFilter(keep)


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not fit the run; the message says how to fix it."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint's files cannot be read back, or give other bytes than were saved."""


def image_dataset(data_config) -> str:
  """The images a run trains on: tfds' CIFAR-N builders hold cifar10/cifar100's images, so a teacher trained on
  either serves both."""
  if data_config.source == 'synthetic':
    return 'synthetic'
  return data.DATASETS.get(data_config.name, {}).get('base', data_config.name)


def stage_meta(config, stage: str, image_shape) -> dict:
  """The `meta` item saved with every checkpoint of `stage` (RGRL's also names the method: its networks and
  per-example state shape the checkpoint)."""
  meta = {
      'stage': stage,
      'dataset': image_dataset(config.data),
      'model': config.model.name,
      'width': config.model.width,
      'projector_dim': config.model.projector_dim,
      'projector_layers': config.model.projector_layers,
      'predictor_dim': config.model.predictor_dim,
      'student': config.student.name,
      'student_width': config.student.width,
      'image_shape': [int(s) for s in image_shape],
  }
  if stage == 'rgrl':
    meta['method'] = config.method.name
  return meta


@functools.cache
def _write_each_array_whole() -> None:
  """Makes Orbax write every replicated array as one piece, from its first replica.

  Orbax's default on TPU and CPU ("replica-parallel") cuts each replicated array into one slice per device, for its
  replicas to write in parallel: every distinct slice is a small XLA program to compile (136 of them for
  configs/tiny.py on 8 CPU devices, ~7 of its ~40 CPU-seconds), and a CIFAR ResNet's few MB per array gain nothing
  from the split. Orbax already does this on GPUs. The files written are the same either way.
  """
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
  )


def manager(directory: str, *, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of one stage's checkpoints; `read_only` for a stage this process only reads (a teacher)."""
  _write_each_array_whole()
  options = (
      ocp.CheckpointManagerOptions(read_only=True, create=False)
      if read_only
      else ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  )
  return ocp.CheckpointManager(fileio.absolute(directory), item_names=('state', 'meta'), options=options)


def state_digest(state: Any) -> str:
  """sha256 of every leaf's path, dtype, shape and bytes: what the checkpoint must give back bit for bit."""
  digest = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(state))
  for path, leaf in leaves:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f'{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves `state` (replicated, host-local or global) and `meta` plus the state's digest at `step`, asynchronously.

  Every process must call it at the same step (Orbax synchronises them); `wait` before the process exits."""
  meta = {**meta, 'state_sha256': state_digest(state)}
  mngr.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(parallel.to_global(state)), meta=ocp.args.JsonSave(meta)),
      force=True,
  )


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def _global_abstract(target: Any) -> Any:
  """`target`'s structure, shapes and dtypes, replicated over the devices of every process."""
  sharding = parallel.replicated_sharding()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), target)


def restore(mngr: ocp.CheckpointManager, step: int, target: Any, expected_digest: Optional[str] = None) -> Any:
  """Restores `state` at `step` into the structure, shapes and dtypes of `target` (a concrete or abstract state),
  replicated on this process's devices as `parallel.pmap_step` keeps it.

  Raises:
    DamagedCheckpointError: the restored bytes do not have `expected_digest` (when given).
  """
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_global_abstract(target))))
  state = parallel.to_local(restored['state'])
  if expected_digest is not None and state_digest(state) != expected_digest:
    raise DamagedCheckpointError('its state does not match the digest saved with it')
  return state


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(mngr.directory), str(step))


def _restore_checked(mngr, step: int, target: Any, expected_meta: dict, keys) -> Any:
  """Restores `step` after checking its meta against `expected_meta` on `keys`.

  Raises:
    DamagedCheckpointError: the checkpoint cannot be read, or fails its digest.
    CheckpointError: it is intact but was trained with another config (not damage: nothing falls back).
  """
  try:
    meta = restore_meta(mngr, step)
    if not isinstance(meta, dict):
      raise ValueError(f'its meta is a {type(meta).__name__}, not a JSON object')
  except Exception as e:  # noqa: BLE001  Orbax and tensorstore raise many types for unreadable files.
    raise DamagedCheckpointError(f'its meta cannot be read ({type(e).__name__}: {_first_line(e)})') from e
  check_meta(meta, expected_meta, str(mngr.directory), keys)
  try:
    return restore(mngr, step, target, meta.get('state_sha256'))
  except DamagedCheckpointError:
    raise
  except Exception as e:  # noqa: BLE001
    raise DamagedCheckpointError(f'its state cannot be read ({type(e).__name__}: {_first_line(e)})') from e


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ''


def _set_aside(mngr: ocp.CheckpointManager, steps) -> None:
  """Renames damaged step directories to STEP.damaged (kept for inspection; Orbax no longer lists them) so that the
  resumed run can write those steps again."""
  if jax.process_index() == 0:
    for step in steps:
      source = epath.Path(_step_dir(mngr, step))
      target = epath.Path(f'{source}.damaged')
      if target.exists():
        target.rmtree()
      source.rename(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices(f'rmdnet_set_aside_{mngr.directory}')
  mngr.reload()


def restore_latest(mngr: ocp.CheckpointManager, target: Any, expected_meta: dict) -> Optional[Any]:
  """Resume point of a stage: the latest intact state in `mngr`, or None when the stage has not started yet.

  Damaged newer checkpoints are set aside (STEP.damaged) with a warning and the newest intact one is restored.

  Raises:
    CheckpointError: the checkpoints are of another config, or none of them is intact (says what to remove).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  damaged, problems = [], []
  for step in steps:
    try:
      state = _restore_checked(mngr, step, target, expected_meta, STATE_KEYS)
    except DamagedCheckpointError as e:
      logging.warning('The checkpoint %s is damaged: %s.', _step_dir(mngr, step), e)
      damaged.append(step)
      problems.append(str(e))
      continue
    if damaged:
      logging.warning(
          'Resuming from the newest intact checkpoint, step %d; setting aside the damaged %s as ' '*.damaged.',
          step,
          ', '.join(_step_dir(mngr, s) for s in damaged),
      )
      _set_aside(mngr, damaged)
    return state
  raise CheckpointError(
      f'Every checkpoint in {mngr.directory} is damaged (steps {", ".join(map(str, steps))}, newest: '
      f'{problems[0]}); remove that directory to start the stage again, or restore it from a copy.'
  )


def check_meta(found: dict, expected: dict, where: str, keys) -> None:
  for key in keys:
    if found.get(key) != expected.get(key):
      raise CheckpointError(
          f'The checkpoint in {where} was trained with {key}={found.get(key)!r} but this run has '
          f'{key}={expected.get(key)!r}; use a new --workdir, or point --config.relation.teacher_checkpoint '
          'at a matching RM checkpoint, or change the config to match.'
      )


def teacher_directory(directory: str) -> str:
  """The stage checkpoint directory `relation.teacher_checkpoint` names: itself, or in a work directory holding
  exactly one of rm/ and rgrl/, that one."""
  if '://' in directory or not os.path.isdir(directory) or any(n.isdigit() for n in os.listdir(directory)):
    return directory
  stages = [name for name in ('rm', 'rgrl') if os.path.isdir(os.path.join(directory, name))]
  if len(stages) == 2:
    raise CheckpointError(
        f'{directory} is a work directory with both an RM and an RGRL stage; set '
        f'--config.relation.teacher_checkpoint={os.path.join(directory, "rm")} (its SimSiam teacher) or '
        f'{os.path.join(directory, "rgrl")} (its student).'
    )
  return os.path.join(directory, stages[0]) if stages else directory


def restore_teacher(
    directory: str, rm_target: Any, expected_meta: dict, step: int = 0, finished_step: Optional[int] = None
) -> tuple[dict, int]:
  """The teacher's variables {'params', 'batch_stats'} in `directory`, checked to fit this run, and their step.

  Two kinds of checkpoint make a teacher:
    * an RM checkpoint (WORKDIR/rm): the SimSiam network, all of it (backbone, projector, predictor), checked to
      match this run's model (architecture, width, heads) and dataset;
    * an RGRL checkpoint (WORKDIR/rgrl): a student trained by any method, e.g. CE on clean labels (a diagnostic
      teacher of known quality). Only its backbone is restored (of its first network, for two-network methods),
      checked to be the network this run's `model.name` and `model.width` describe.

  Args:
    directory: a stage checkpoint directory (default WORKDIR/rm), or a work directory with one of rm/ and rgrl/.
    rm_target: a freshly initialised RM state giving structure, shapes and shardings of an RM checkpoint.
    expected_meta: `stage_meta(config, 'rm', image_shape)` of this run.
    step: the checkpoint to take (`relation.teacher_step`); 0 = the latest.
    finished_step: when given, the RM stage's last step: an earlier checkpoint is refused (an unfinished RM stage
      of this run is not a teacher).

  Returns:
    (the teacher's variables, its step).
  """
  directory = teacher_directory(directory)
  if '://' not in directory and not os.path.isdir(directory):
    raise CheckpointError(
        f'No RM (SimSiam) checkpoint at {directory}; run the rm stage first (--config.stages=rm,rgrl) or set '
        '--config.relation.teacher_checkpoint to the rm/ directory of a finished run.'
    )
  mngr = manager(directory, read_only=True)
  requested, step = step, mngr.latest_step()
  if step is None:
    raise CheckpointError(
        f'{directory} holds no finished RM checkpoint; finish the rm stage first or set '
        '--config.relation.teacher_checkpoint to the rm/ directory of a finished run.'
    )
  if requested:
    if requested not in mngr.all_steps():
      raise CheckpointError(
          f'{directory} has no RM checkpoint at step {requested} (it has steps '
          f'{", ".join(map(str, sorted(mngr.all_steps())))}); set --config.relation.teacher_step to one of them, '
          'or 0 for the latest.'
      )
    step = requested
  if finished_step is not None and step < finished_step:
    raise CheckpointError(
        f'The RM stage in {directory} stopped at step {step} of {finished_step}; finish it first '
        '(run with --config.stages=rm,rgrl) or set --config.relation.teacher_checkpoint explicitly.'
    )
  try:
    meta = restore_meta(mngr, step)
  except Exception:  # noqa: BLE001  unreadable: _restore_checked names the damage below
    meta = {}
  try:
    if isinstance(meta, dict) and meta.get('stage') == 'rgrl':
      return _restore_student_backbone(mngr, step, meta, expected_meta), step
    state = _restore_checked(mngr, step, rm_target, expected_meta, TEACHER_KEYS)
  except DamagedCheckpointError as e:
    raise CheckpointError(
        f'The teacher checkpoint {_step_dir(mngr, step)} is damaged ({e}); remove that directory and rerun its '
        'stage to retrain its steps from the checkpoint before it.'
    ) from None
  return state.variables, step


def _restore_student_backbone(mngr, step: int, meta: dict, expected_meta: dict) -> dict:
  """{'params': {'backbone'}, 'batch_stats': {'backbone'}} of the first network of the RGRL checkpoint at `step`,
  after checking that its images and backbone are those of this run's teacher network (`expected_meta`, RM)."""
  check_meta(meta, expected_meta, str(mngr.directory), ('dataset', 'image_shape'))
  found = (meta.get('student'), meta.get('student_width'))
  wanted = (expected_meta.get('model'), expected_meta.get('width'))
  if found != wanted:
    raise CheckpointError(
        f'The teacher checkpoint in {mngr.directory} holds a student {found[0]} of width {found[1]}, but this run '
        f'describes its teacher network as {wanted[0]} of width {wanted[1]} (model.name, model.width); set '
        f'--config.model.name={found[0]} --config.model.width={found[1]}, or use another checkpoint.'
    )
  path = epath.Path(_step_dir(mngr, step)) / 'state'
  try:
    saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    sharding = parallel.replicated_sharding()
    abstract = {
        part: {'backbone': jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)}
        for part, tree in ((part, saved[part]['backbone']) for part in ('params', 'batch_stats'))
    }
    # Only the backbone is read (the student's heads, optimizer and method state are not the teacher's). The digest
    # covers the whole state, so it cannot be checked here; an unreadable file still raises.
    restored = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True
        ),
    )
  except Exception as e:  # noqa: BLE001  Orbax and tensorstore raise many types for unreadable files.
    raise DamagedCheckpointError(f'its state cannot be read ({type(e).__name__}: {_first_line(e)})') from e
  variables = parallel.to_local(restored)
  if methods.get_method(meta.get('method', 'ce')).num_networks > 1:  # leaves stacked [networks, ...]
    variables = jax.tree.map(lambda x: x[0], variables)
  return variables
