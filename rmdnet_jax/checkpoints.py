"""Orbax checkpoints: one `CheckpointManager` per stage (WORKDIR/rm, WORKDIR/rgrl), and the RM -> RGRL hand-off.

Each checkpoint holds two items: `state` (the whole train state: params, BatchNorm statistics, optimizer state,
step) and `meta` (JSON: what the state was trained on). Orbax writes to a temporary directory and renames it when
complete, so an interrupted save never leaves a half checkpoint that a resume could pick up.
"""
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from rmdnet_jax import data, fileio

# What must agree between an RM checkpoint and the RGRL run that uses it as a teacher.
TEACHER_KEYS = ('stage', 'dataset', 'model', 'width', 'projector_dim', 'projector_layers', 'predictor_dim',
                'image_shape')
# What must agree between a checkpoint and the run resuming (or analysing) it.
STATE_KEYS = TEACHER_KEYS + ('student', 'student_width', 'method')


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not fit the run; the message says how to fix it."""


def image_dataset(data_config) -> str:
  """The images a run trains on: tfds' CIFAR-N builders hold cifar10/cifar100's images, so a teacher trained on
  either serves both."""
  if data_config.source == 'synthetic':
    return 'synthetic'
  return data.DATASETS.get(data_config.name, {}).get('base', data_config.name)


def stage_meta(config, stage: str, image_shape) -> dict:
  """The `meta` item saved with every checkpoint of `stage` (RGRL's also names the method: its networks and
  per-example state shape the checkpoint)."""
  meta = {'stage': stage, 'dataset': image_dataset(config.data),
          'model': config.model.name, 'width': config.model.width, 'projector_dim': config.model.projector_dim,
          'projector_layers': config.model.projector_layers, 'predictor_dim': config.model.predictor_dim,
          'student': config.student.name, 'student_width': config.student.width,
          'image_shape': [int(s) for s in image_shape]}
  if stage == 'rgrl':
    meta['method'] = config.method.name
  return meta


def manager(directory: str, *, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of one stage's checkpoints; `read_only` for a stage this process only reads (a teacher)."""
  options = (ocp.CheckpointManagerOptions(read_only=True, create=False) if read_only else
             ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))
  return ocp.CheckpointManager(fileio.absolute(directory), item_names=('state', 'meta'), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True)


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def restore(mngr: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """Restores `state` at `step` into the structure, shapes and shardings of `target` (a concrete state)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))['state']


def restore_latest(mngr: ocp.CheckpointManager, target: Any, expected_meta: dict) -> Optional[Any]:
  """Resume point of a stage: the latest state in `mngr`, or None when the stage has not started yet."""
  step = mngr.latest_step()
  if step is None:
    return None
  check_meta(restore_meta(mngr, step), expected_meta, str(mngr.directory),
             STATE_KEYS)
  return restore(mngr, step, target)


def check_meta(found: dict, expected: dict, where: str, keys) -> None:
  for key in keys:
    if found.get(key) != expected.get(key):
      raise CheckpointError(
          f'The checkpoint in {where} was trained with {key}={found.get(key)!r} but this run has '
          f'{key}={expected.get(key)!r}; use a new --workdir, or point --config.relation.teacher_checkpoint '
          'at a matching RM checkpoint, or change the config to match.')


def restore_teacher(directory: str, rm_target: Any, expected_meta: dict) -> Any:
  """The final RM state in `directory`, checked to match this run's architecture, width and dataset.

  Args:
    directory: an RM stage checkpoint directory (default WORKDIR/rm).
    rm_target: a freshly initialised RM state giving structure, shapes and shardings.
    expected_meta: `stage_meta(config, 'rm', image_shape)` of this run.
  """
  if '://' not in directory and not os.path.isdir(directory):
    raise CheckpointError(
        f'No RM (SimSiam) checkpoint at {directory}; run the rm stage first (--config.stages=rm,rgrl) or set '
        '--config.relation.teacher_checkpoint to the rm/ directory of a finished run.')
  mngr = manager(directory, read_only=True)
  step = mngr.latest_step()
  if step is None:
    raise CheckpointError(
        f'{directory} holds no finished RM checkpoint; finish the rm stage first or set '
        '--config.relation.teacher_checkpoint to the rm/ directory of a finished run.')
  check_meta(restore_meta(mngr, step), expected_meta, directory, TEACHER_KEYS)
  return restore(mngr, step, rm_target), step
