"""Runs the stages a config names — RM (SimSiam), teacher kNN check, RGRL (distillation) — and reports.

    run(config, workdir)
      data.load(config.data)                  -> uint8 host arrays, clean labels
      noisy_labels_for_run(...)               -> WORKDIR/noisy_labels.npz (made once, reloaded on every resume)
      RM:   loop.train(simsiam_step)          -> WORKDIR/rm/<step>     (Orbax)
      checkpoints.restore_teacher(...)        -> frozen encoder
      RGRL: loop.train(distill_step)          -> WORKDIR/rgrl/<step>   (Orbax)
      WORKDIR/results.json + a printed summary

Every stage resumes from its own latest checkpoint; a finished stage is not run again.
"""

import functools
import hashlib
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from rmdnet_jax import (
    augment,
    checkpoints,
    config_checks,
    data,
    device_data,
    distill,
    fileio,
    linear_probe,
    loop,
    methods,
    metrics,
    noise,
    parallel,
    simsiam,
)
from rmdnet_jax import train_state as train_state_lib
from rmdnet_jax import workdir as workdir_lib

# Independent random streams derived from config.seed (init, augmentation and data order of each stage).
STREAM_RM, STREAM_RGRL = 1, 2
# Teacher kNN accuracy (clean labels, monitor) below which the CPU study (README, "Evidence") saw RMDNet lose to
# plain CE at every K it tried: the RGRL stage warns below it.
WEAK_TEACHER_KNN = 0.25
# Keys whose change does not change the results: a run may be resumed with different values.
RESUMABLE_KEYS = (
    'stages',
    'log_every_steps',
    'allow_config_change',
    'eval_batch_size',
    'data.data_dir',
    'data.npz_path',
    'data.cifar_n_labels',
    'data.resident_on_device',
    'max_to_keep',
    'relation.teacher_checkpoint',
    # Monitors and logging: the linear probe is recomputed by its stage; these keys are newer than
    # some work directories, whose config.json lacks them.
    'linear_probe.epochs',
    'linear_probe.batch_size',
    'linear_probe.learning_rate',
    'linear_probe.momentum',
    'linear_probe.weight_decay',
    'logging.progress_bar',
    'logging.progress_every_secs',
    'logging.wandb_project',
    'logging.wandb_entity',
    'logging.wandb_mode',
)

# Keys added after some work directories were made, with the value that gives the behaviour those runs had: a saved
# config.json without the key had this value.
KEYS_ADDED_LATER = {'relation.batch_center': False, 'relation.normalize': 'none', 'relation.teacher_step': 0}


class WorkdirConfigMismatch(RuntimeError):
  """The work directory holds a run with another config."""


# The work directory cannot be used: a file, not writable, in use by another run, or a damaged run file.
WorkdirError = workdir_lib.WorkdirError


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str, *, save: bool = True) -> None:
  """Later runs in a work directory must have the config in its WORKDIR/config.json (but RESUMABLE_KEYS); `save`
  writes the file. `run` checks first and saves only once the data, labels and teacher are found good, so a
  refused start leaves no config behind that would refuse the corrected command."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort())
  if fileio.exists(path):
    try:
      saved = json.loads(fileio.read_text(path))
    except ValueError as e:
      raise WorkdirError(
          f"{path} is damaged ({data.brief_error(e)}); restore it, or delete it to adopt this run's config "
          '(only if the run in that directory had this config).'
      ) from e
    a, b = {**KEYS_ADDED_LATER, **_flatten(saved)}, _flatten(current)
    changed = sorted(k for k in set(a) | set(b) if k not in RESUMABLE_KEYS and a.get(k) != b.get(k))
    if changed and not config.allow_config_change:
      detail = ', '.join(f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in changed[:5])
      raise WorkdirConfigMismatch(
          f'{workdir} holds a run with a different config ({detail}); use a new --workdir, or pass '
          '--config.allow_config_change=True to resume it with the new values.'
      )
  if save and jax.process_index() == 0:
    fileio.write_text(path, config.to_json_best_effort(indent=2))


def labels_digest(labels: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()[:16]


def noisy_labels_for_run(config: ml_collections.ConfigDict, dataset: data.Dataset, workdir: str) -> noise.NoisyLabels:
  """The run's noisy labels: made once from config.noise and saved in WORKDIR/noisy_labels.npz; every later
  stage and resume reloads that file, so all of them see exactly the same labels.

  With noise.kind=human they are not generated but taken from the dataset's CIFAR-N column noise.human_label
  (noise.rate and noise.seed play no part); the realised rate and the transition matrix are then empirical.
  """
  noisy, save = prepare_noisy_labels(config, dataset, workdir)
  save()
  return noisy


def prepare_noisy_labels(
    config: ml_collections.ConfigDict, dataset: data.Dataset, workdir: str
) -> tuple[noise.NoisyLabels, Callable[[], None]]:
  """`noisy_labels_for_run` in two steps: (the labels, a function that saves them when they are new). `run`
  saves only once the run really starts, so a refused start leaves no labels that would refuse the corrected
  command."""
  path = os.path.join(workdir, 'noisy_labels.npz')
  n = config.noise
  human = n.kind == config_checks.HUMAN_NOISE
  common = {
      'dataset': dataset.name,
      'num_examples': int(len(dataset.train_labels)),
      'clean_labels_sha256': labels_digest(dataset.train_labels),
  }
  if human:
    column = data.human_noisy_labels(dataset, n.human_label)
    # The labels' digest too: another CIFAR-N file (or version) must not resume this run silently.
    meta = {'kind': n.kind, 'human_label': n.human_label, **common, 'noisy_labels_sha256': labels_digest(column)}
  else:
    meta = {
        'kind': n.kind,
        'rate': float(n.rate),
        'seed': int(n.seed),
        'symmetric_from_all': n.symmetric_from_all,
        'cifar100_grouping': n.cifar100_grouping,
        **common,
    }
  if fileio.exists(path):
    try:
      noisy, saved = noise.load_noisy_labels(path)
    except noise.NoisyLabelsFileError as e:
      raise WorkdirError(str(e)) from e
    mismatched = [k for k in meta if saved.get(k) != meta[k]]
    if mismatched:
      raise WorkdirConfigMismatch(
          f'{path} was made with {", ".join(f"{k}={saved.get(k)!r}" for k in mismatched)}, not '
          f'{", ".join(f"{k}={meta[k]!r}" for k in mismatched)}; use a new --workdir for other noise or data.'
      )
    if noisy.transition.shape[0] != dataset.num_classes:
      raise WorkdirError(
          f'{path} holds labels of {noisy.transition.shape[0]} classes but {dataset.name} has '
          f'{dataset.num_classes}; delete it, and the same config remakes the same labels from the data.'
      )
    logging.info('Reloaded noisy labels from %s (realised rate %.4f).', path, noisy.realized_rate)
    return noisy, lambda: None
  if human:
    labels = np.asarray(column, np.int64)
    noisy = noise.NoisyLabels(
        labels=labels,
        realized_rate=float(np.mean(labels != dataset.train_labels)),
        transition=noise.empirical_transition(dataset.train_labels, labels, dataset.num_classes),
    )
  else:
    noisy = noise.make_noisy_labels(
        dataset.train_labels,
        kind=n.kind,
        rate=n.rate,
        num_classes=dataset.num_classes,
        seed=n.seed,
        coarse_labels=dataset.train_coarse_labels,
        images=dataset.train_images if n.kind == 'instance' else None,
        symmetric_from_all=n.symmetric_from_all,
        cifar100_grouping=n.cifar100_grouping,
    )

  def save_fn():
    if jax.process_index() == 0:
      noise.save_noisy_labels(path, noisy, meta)
    if human:
      logging.info(
          'Took the CIFAR-N %s labels as noisy labels: realised rate %.4f, saved to %s.',
          n.human_label,
          noisy.realized_rate,
          path,
      )
    else:
      logging.info(
          'Made %s noisy labels (rate %.2f, seed %d): realised rate %.4f, saved to %s.',
          n.kind,
          n.rate,
          n.seed,
          noisy.realized_rate,
          path,
      )

  return noisy, save_fn


def stage_schedule(stage_config, num_examples: int, log_every_steps: int) -> loop.StageSchedule:
  steps_per_epoch = num_examples // stage_config.batch_size
  if steps_per_epoch == 0:
    raise config_checks.ConfigError(
        f'The batch size {stage_config.batch_size} exceeds the {num_examples} training examples; lower it.'
    )
  return loop.StageSchedule(
      num_steps=stage_config.epochs * steps_per_epoch,
      steps_per_epoch=steps_per_epoch,
      log_every_steps=log_every_steps or steps_per_epoch,
      eval_every_steps=stage_config.eval_every_epochs * steps_per_epoch,
      checkpoint_every_steps=stage_config.checkpoint_every_epochs * steps_per_epoch,
  )


def _stage_keys(config, stream: int):
  init_rng, step_rng = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), stream))
  return init_rng, step_rng


def stage_input(
    config, stage_config, arrays: dict, step_fn, data_argnum: int, *, stream: int, start_step: int, num_steps: int
):
  """A stage's pmapped step, its batch iterator and the step arguments that go before the batch.

  With `data.resident_on_device` the training arrays are put on every device once and each batch is the global
  batch's row numbers only (`device_data`); otherwise this host slices the arrays and ships the examples. Both
  give the step exactly the same examples in the same order.

  Args:
    arrays: {name: host array [N, ...]} the step's batch is made of ('images', and for RGRL 'labels').
    step_fn: the unmapped step, whose argument `data_argnum` is the batch.
  """
  host_slice = parallel.host_batch_slice(stage_config.batch_size, jax.process_index(), jax.process_count())
  order = dict(
      start_step=start_step,
      num_steps=num_steps,
      global_batch_size=stage_config.batch_size,
      seed=config.seed,
      stream=stream,
      host_slice=host_slice,
  )
  if config.data.resident_on_device:
    resident = device_data.put_resident(arrays)
    step = parallel.pmap_step(device_data.with_resident_data(step_fn, data_argnum), sharded_argnums=(data_argnum + 1,))
    batches = map(parallel.shard, device_data.index_batches(len(next(iter(arrays.values()))), **order))
    return step, batches, (resident,)
  step = parallel.pmap_step(step_fn, sharded_argnums=(data_argnum,))
  return step, map(parallel.shard, data.host_batches(arrays, **order)), ()


def _resume(mngr, state, meta, total_steps: int, stage: str):
  restored = checkpoints.restore_latest(mngr, state, meta)
  if restored is None:
    return state, 0
  start = int(restored.step)
  logging.info('%s: resuming from step %d of %d (%s).', stage, start, total_steps, mngr.directory)
  return restored, start


def on_uint8_images(apply, dataset, output_key=None):
  """apply(variables, float images) as a function of the dataset's uint8 images (normalised with its statistics),
  optionally picking one output; built once per stage so it compiles once."""

  def on_uint8(variables, images):
    out = apply(variables, augment.normalize(images, dataset.mean, dataset.std))
    return out if output_key is None else out[output_key]

  return on_uint8


def encoder_features_fn(config, dataset, layer=None):
  """apply(variables, uint8 images) -> the teacher's features of `layer` ('backbone' or 'projector'; default
  relation.teacher_layer)."""
  return on_uint8_images(distill.teacher_apply_fn(config, layer), dataset)


def knn_monitor(config, dataset, variables, features_fn) -> float:
  """kNN accuracy of the encoder on the test set. Uses the CLEAN training labels: a monitor of representation
  quality only, never a reported noisy-label result."""
  logging.info('kNN monitor: encoding %d train + %d test images.', len(dataset.train_images), len(dataset.test_images))
  train_features = parallel.map_batches(features_fn, variables, dataset.train_images, config.eval_batch_size)
  test_features = parallel.map_batches(features_fn, variables, dataset.test_images, config.eval_batch_size)
  return metrics.knn_accuracy(
      train_features,
      dataset.train_labels,
      test_features,
      dataset.test_labels,
      num_classes=dataset.num_classes,
      k=config.rm.knn_k,
      temperature=config.rm.knn_temperature,
  )


def rm_stage(config, dataset: data.Dataset, workdir: str, writer) -> Any:
  """SimSiam pretraining on all training images (labels unused). Returns the final RM train state."""
  sched = stage_schedule(config.rm, len(dataset.train_images), config.log_every_steps)
  lr_fn = train_state_lib.learning_rate_schedule(config.rm, sched.steps_per_epoch)
  init_rng, step_rng = _stage_keys(config, STREAM_RM)
  state = parallel.replicate(simsiam.create_simsiam_state(init_rng, config, dataset.image_shape, lr_fn))
  mngr = checkpoints.manager(os.path.join(workdir, 'rm'), max_to_keep=config.max_to_keep)
  meta = checkpoints.stage_meta(config, 'rm', dataset.image_shape)
  state, start = _resume(mngr, state, meta, sched.num_steps, 'rm')
  if start >= sched.num_steps:
    logging.info('rm: already complete (%d steps); skipping.', start)
    return state
  logging.info(
      'rm: SimSiam on %d images, %d steps (%d epochs x %d), global batch %d on %d devices.',
      len(dataset.train_images),
      sched.num_steps,
      config.rm.epochs,
      sched.steps_per_epoch,
      config.rm.batch_size,
      parallel.global_device_count(),
  )
  logging.info('rm: the kNN monitor uses the CLEAN training labels (a monitor of the encoder, not a result).')
  step_fn, batches, data_args = stage_input(
      config,
      config.rm,
      {'images': dataset.train_images},
      functools.partial(simsiam.simsiam_step, view_kwargs=simsiam.view_kwargs(config, dataset.mean, dataset.std)),
      data_argnum=1,
      stream=STREAM_RM,
      start_step=start,
      num_steps=sched.num_steps,
  )
  features_fn = encoder_features_fn(config, dataset)
  eval_fn = lambda s: {
      'knn_accuracy': knn_monitor(config, dataset, {'params': s.params, 'batch_stats': s.batch_stats}, features_fn)
  }
  state = loop.train(
      stage='rm',
      state=state,
      step_fn=step_fn,
      batches=batches,
      rng=step_rng,
      start_step=start,
      schedule=sched,
      mngr=mngr,
      meta=meta,
      writer=writer,
      learning_rate_fn=lr_fn,
      global_batch_size=config.rm.batch_size,
      eval_fn=eval_fn,
      step_args=data_args,
      progress_options=progress_options(config),
  )
  mngr.close()
  return state


def _teacher_dir(config, workdir: str) -> str:
  return config.relation.teacher_checkpoint or os.path.join(workdir, 'rm')


def load_teacher(config, dataset: data.Dataset, workdir: str) -> dict:
  """The frozen teacher variables from the RM checkpoint, refusing one from another architecture or dataset."""
  directory = _teacher_dir(config, workdir)
  rm_sched = stage_schedule(config.rm, len(dataset.train_images), config.log_every_steps)
  lr_fn = train_state_lib.learning_rate_schedule(config.rm, rm_sched.steps_per_epoch)
  target = jax.eval_shape(lambda: simsiam.create_simsiam_state(jax.random.key(0), config, dataset.image_shape, lr_fn))
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated_sharding()), target
  )
  rm_state, step = checkpoints.restore_teacher(
      directory, target, checkpoints.stage_meta(config, 'rm', dataset.image_shape), step=config.relation.teacher_step
  )
  if not config.relation.teacher_checkpoint and step < rm_sched.num_steps:
    raise checkpoints.CheckpointError(
        f'The RM stage in {directory} stopped at step {step} of {rm_sched.num_steps}; finish it first '
        '(run with --config.stages=rm,rgrl) or set --config.relation.teacher_checkpoint explicitly.'
    )
  logging.info('Teacher: RM checkpoint %s at step %d.', directory, step)
  return distill.teacher_variables({'params': rm_state.params, 'batch_stats': rm_state.batch_stats})


def teacher_knn_stage(config, dataset: data.Dataset, workdir: str, writer, teacher=None) -> dict:
  """Restores the teacher exactly as RGRL does (unless `teacher` is that, already restored) and reports its kNN
  accuracy: proves the RM -> RGRL hand-off."""
  if teacher is None:
    teacher = load_teacher(config, dataset, workdir)
  accuracy = knn_monitor(config, dataset, teacher, encoder_features_fn(config, dataset))
  logging.info('Teacher kNN accuracy (clean labels, monitor): %.4f', accuracy)
  writer.write_scalars(0, {'teacher/knn_accuracy': accuracy})
  return {'teacher_knn_accuracy': accuracy}


def linear_probe_stage(config, dataset: data.Dataset, workdir: str, writer, teacher=None) -> dict:
  """Linear probe of the frozen teacher (restored as RGRL does), reported beside its kNN monitor.

  SimSiam's CIFAR protocol on precomputed features (`rmdnet_jax.linear_probe`): the teacher's pooled backbone
  features, a linear classifier trained with the CLEAN training labels, scored on the test set. Both numbers
  measure the teacher's representation; neither is a result on noisy labels.
  """
  if teacher is None:
    teacher = load_teacher(config, dataset, workdir)
  backbone = encoder_features_fn(config, dataset, layer='backbone')
  logging.info(
      'Linear probe: encoding %d train + %d test images with the frozen teacher.',
      len(dataset.train_images),
      len(dataset.test_images),
  )
  train_features = parallel.map_batches(backbone, teacher, dataset.train_images, config.eval_batch_size)
  test_features = parallel.map_batches(backbone, teacher, dataset.test_images, config.eval_batch_size)
  p = config.linear_probe
  probe = linear_probe.accuracy(
      train_features,
      dataset.train_labels,
      test_features,
      dataset.test_labels,
      num_classes=dataset.num_classes,
      epochs=p.epochs,
      batch_size=p.batch_size,
      learning_rate=p.learning_rate,
      momentum=p.momentum,
      weight_decay=p.weight_decay,
      seed=config.seed,
  )
  if config.relation.teacher_layer == 'backbone':  # the kNN monitor's features: the same arrays
    knn = metrics.knn_accuracy(
        train_features,
        dataset.train_labels,
        test_features,
        dataset.test_labels,
        num_classes=dataset.num_classes,
        k=config.rm.knn_k,
        temperature=config.rm.knn_temperature,
    )
  else:
    knn = knn_monitor(config, dataset, teacher, encoder_features_fn(config, dataset))
  logging.info(
      "Teacher monitors (clean labels; the teacher's representation, not a noisy-label result): "
      'linear probe %.4f, kNN %.4f.',
      probe,
      knn,
  )
  writer.write_scalars(0, {'teacher/linear_probe_accuracy': probe, 'teacher/knn_accuracy': knn})
  return {'teacher_linear_probe_accuracy': probe, 'teacher_knn_accuracy': knn}


def progress_options(config) -> dict:
  """`loop.train`'s progress reporting from config.logging (absent in configs saved before it existed)."""
  g = config.get('logging')
  if g is None:
    return {}
  return {'every_secs': float(g.progress_every_secs), 'bar': None if g.progress_bar else False}


def logits_fn(config, dataset):
  """apply(variables, uint8 images) -> student logits; built once per stage so it compiles once."""
  return on_uint8_images(distill.classify_fn(config), dataset, 'logits')


def predict(config, variables, images, logits_apply) -> np.ndarray:
  return np.argmax(parallel.map_batches(logits_apply, variables, images, config.eval_batch_size), axis=-1)


def rgrl_stage(config, dataset: data.Dataset, noisy: noise.NoisyLabels, workdir: str, writer, teacher=None) -> dict:
  """Trains the student on the noisy labels with (method.distill) or without the relation terms; `teacher`, when
  given, is the teacher `load_teacher` restored already."""
  sched = stage_schedule(config.rgrl, len(dataset.train_images), config.log_every_steps)
  lr_fn = train_state_lib.learning_rate_schedule(config.rgrl, sched.steps_per_epoch)
  init_rng, step_rng = _stage_keys(config, STREAM_RGRL)
  needs_teacher = config.method.distill or config.relation.student_init == 'teacher'
  if not needs_teacher:
    teacher = None
  elif teacher is None:
    teacher = load_teacher(config, dataset, workdir)
  method = methods.make_method(config.method)
  state = parallel.replicate(
      distill.create_distill_state(
          init_rng, config, dataset.image_shape, lr_fn, teacher, num_examples=len(dataset.train_images)
      )
  )
  mngr = checkpoints.manager(os.path.join(workdir, 'rgrl'), max_to_keep=config.max_to_keep)
  meta = checkpoints.stage_meta(config, 'rgrl', dataset.image_shape)
  state, start = _resume(mngr, state, meta, sched.num_steps, 'rgrl')

  logits_apply = logits_fn(config, dataset)

  def eval_fn(s):
    variables = {'params': s.params, 'batch_stats': s.batch_stats}
    preds = predict(config, variables, dataset.test_images, logits_apply)
    scalars = {'test_accuracy': float(np.mean(preds == dataset.test_labels))}
    if config.rgrl.track_memorization:
      # The memorisation curve: agreement with the noisy labels rising while agreement with the (hidden) clean
      # labels falls is the network fitting the noise. Clean labels are read here for this curve only.
      train_preds = predict(config, variables, dataset.train_images, logits_apply)
      scalars['train_accuracy_noisy_labels'] = float(np.mean(train_preds == noisy.labels))
      scalars['train_accuracy_clean_labels'] = float(np.mean(train_preds == dataset.train_labels))
    return scalars

  teacher_report = {}
  if start < sched.num_steps and config.method.distill:
    teacher_report = teacher_knn_stage(config, dataset, workdir, writer, teacher=teacher)
    warn_if_weak_teacher(teacher_report['teacher_knn_accuracy'])
  if start < sched.num_steps:
    logging.info(
        'rgrl: %s on %s noisy labels (realised rate %.4f)%s, %d steps, global batch %d.',
        config.method.name,
        config.noise.kind,
        noisy.realized_rate,
        f' + relation distillation (K={config.relation.K})' if config.method.distill else '',
        sched.num_steps,
        config.rgrl.batch_size,
    )
    step_fn, batches, data_args = stage_input(
        config,
        config.rgrl,
        {'images': dataset.train_images, 'labels': noisy.labels},
        functools.partial(
            distill.distill_step,
            teacher_apply=distill.teacher_apply_fn(config) if config.method.distill else None,
            method=method,
            K=config.relation.K,
            relation_kwargs=distill.relation_kwargs(config),
            view_kwargs=distill.view_kwargs(config, dataset.mean, dataset.std),
            steps_per_epoch=sched.steps_per_epoch,
        ),
        data_argnum=2,
        stream=STREAM_RGRL,
        start_step=start,
        num_steps=sched.num_steps,
    )
    state = loop.train(
        stage='rgrl',
        state=state,
        step_fn=step_fn,
        batches=batches,
        rng=step_rng,
        start_step=start,
        schedule=sched,
        mngr=mngr,
        meta=meta,
        writer=writer,
        learning_rate_fn=lr_fn,
        global_batch_size=config.rgrl.batch_size,
        eval_fn=eval_fn,
        step_args=(teacher if config.method.distill else None,) + data_args,
        epoch_start_fn=method_epoch_hook(config, dataset, noisy, method),
        progress_options=progress_options(config),
    )
  else:
    logging.info('rgrl: already complete (%d steps).', start)
  mngr.close()
  return {**teacher_report, **final_report(config, dataset, noisy, state, workdir, eval_fn, logits_apply)}


def warn_if_weak_teacher(knn_accuracy: float) -> None:
  """One warning when the teacher is as weak as the ones with which the CPU study saw RMDNet lose to CE."""
  if knn_accuracy < WEAK_TEACHER_KNN:
    logging.warning(
        "The teacher's kNN accuracy %.1f%% is below %.0f%%, where the CPU study saw RMDNet lose to plain CE at "
        'every K (README, "Evidence"); train the RM stage longer, or lower --config.relation.K.',
        100 * knn_accuracy,
        100 * WEAK_TEACHER_KNN,
    )


def method_epoch_hook(config, dataset, noisy, method):
  """loop.train's epoch_start_fn for a method with an epoch hook (DivideMix's co-divide), else None."""
  if method.epoch_hook is None:
    return None
  apply = on_uint8_images(distill.network_logits_fn(config), dataset)

  def epoch_start(state, epoch):
    def logits_fn():
      logging.info(
          'rgrl: %s epoch %d: predicting the %d training images.', method.name, epoch, len(dataset.train_images)
      )
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      out = parallel.map_batches(apply, variables, dataset.train_images, config.eval_batch_size)
      return np.moveaxis(out, 1, 0)  # [networks, N, C]

    new = method.epoch_hook(jax.device_get(state.method_state), epoch=epoch, logits_fn=logits_fn, labels=noisy.labels)
    if new is None:
      return state
    return state.replace(method_state=parallel.replicate(jax.tree.map(np.asarray, new)))

  return epoch_start


def final_report(config, dataset, noisy, state, workdir, eval_fn, logits_apply) -> dict:
  """Best and last test accuracy, and how the student treats the clean and the mislabelled training examples
  (clean labels are used for this report only)."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  last = eval_fn(state)['test_accuracy']
  history = [
      row['rgrl/test_accuracy']
      for row in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
      if 'rgrl/test_accuracy' in row
  ]
  preds = predict(config, variables, dataset.train_images, logits_apply)
  is_clean = noisy.labels == dataset.train_labels

  def mean_or_nan(x):
    return float(np.mean(x)) if len(x) else float('nan')

  return {
      'test_accuracy_last': last,
      'test_accuracy_best': max(history + [last]),
      'train_accuracy_clean_subset': mean_or_nan(preds[is_clean] == dataset.train_labels[is_clean]),
      'train_accuracy_noisy_subset': mean_or_nan(preds[~is_clean] == dataset.train_labels[~is_clean]),
      'train_memorized_noisy_subset': mean_or_nan(preds[~is_clean] == noisy.labels[~is_clean]),
      'noise_realized_rate': noisy.realized_rate,
      'rgrl_steps': int(state.step),
  }


def _teacher_needed_first(config, stages) -> bool:
  """Whether a stage needs an existing RM checkpoint (before this run's RM stage, if any, would make one)."""
  uses_teacher = {'teacher_knn', 'linear_probe'}
  if config.method.distill or config.relation.student_init == 'teacher':
    uses_teacher.add('rgrl')
  for stage in stages:
    if stage == 'rm' and not config.relation.teacher_checkpoint:
      return False
    if stage in uses_teacher:
      return True
  return False


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config.stages` in `workdir` and returns (and writes to WORKDIR/results.json) the summary.

  Everything that can refuse the run (config, work directory, data, labels, teacher) is checked before the run
  writes its config.json and noisy labels, and WORKDIR/run.lock keeps a second run out while this one runs.
  """
  config_checks.validate(config)
  stages = config_checks.parse_stages(config.stages)
  workdir_lib.prepare(workdir)
  with workdir_lib.lock(workdir):
    return _run_stages(config, workdir, stages)


def _run_stages(config: ml_collections.ConfigDict, workdir: str, stages: list) -> dict:
  check_workdir_config(config, workdir, save=False)
  dataset = data.load(config.data)
  noisy, save_noisy_labels = prepare_noisy_labels(config, dataset, workdir)
  teacher = load_teacher(config, dataset, workdir) if _teacher_needed_first(config, stages) else None
  # The run really starts: only now does the work directory take its config and labels.
  check_workdir_config(config, workdir)
  save_noisy_labels()
  writer = metrics.create_writer(workdir, config.get('logging'))
  if jax.process_index() == 0:
    writer.write_hparams(_flatten(json.loads(config.to_json_best_effort())))
  noise_name = f'{config.noise.kind}/{config.noise.human_label}' if config.noise.kind == 'human' else config.noise.kind
  results = {
      'workdir': fileio.absolute(workdir),
      'dataset': dataset.name,
      'noise': noise_name,
      'noise_rate': config.noise.rate,
      'method': config.method.name,
      'rmdnet': bool(config.method.distill),
      'seed': config.seed,
  }
  for stage in stages:
    if stage == 'rm':
      rm_stage(config, dataset, workdir, writer)
      results['rm_checkpoints'] = os.path.join(fileio.absolute(workdir), 'rm')
    elif stage == 'teacher_knn':
      results.update(teacher_knn_stage(config, dataset, workdir, writer, teacher=teacher))
    elif stage == 'linear_probe':
      results.update(linear_probe_stage(config, dataset, workdir, writer, teacher=teacher))
    elif stage == 'rgrl':
      results.update(rgrl_stage(config, dataset, noisy, workdir, writer, teacher=teacher))
      results['rgrl_checkpoints'] = os.path.join(fileio.absolute(workdir), 'rgrl')
  writer.write_summary(results)
  writer.close()
  if jax.process_index() == 0:
    fileio.write_text(os.path.join(workdir, 'results.json'), json.dumps(results, indent=2))
  if jax.process_index() == 0:
    print(format_summary(results), flush=True)
  return results


def format_summary(results: dict) -> str:
  rows = [(k, f'{v:.4f}' if isinstance(v, float) else str(v)) for k, v in results.items()]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k.ljust(width)}  {v}' for k, v in rows)
