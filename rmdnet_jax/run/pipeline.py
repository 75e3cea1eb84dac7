"""A run, top to bottom: the stages `config.stages` names, in order, then WORKDIR/results.json.

    rm            simsiam.stage     SimSiam on all training images     -> WORKDIR/rm/<step>   (Orbax)
    teacher_knn   simsiam.teacher_knn       the restored teacher's kNN accuracy (a monitor)
    linear_probe  linear_probe.teacher_monitors   the teacher's linear probe and kNN accuracy (monitors)
    rgrl          distill.stage     the student on the noisy labels    -> WORKDIR/rgrl/<step> (Orbax)

`loop.train` runs a stage from its latest checkpoint; a finished stage is not run again. The noisy labels are
made once (WORKDIR/noisy_labels.npz) and reloaded on every resume; the teacher is the RM stage's checkpoint.
"""

import json
import os

import jax
import ml_collections

from rmdnet_jax import fileio
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.run import config_files
from rmdnet_jax.stages import distill, linear_probe, simsiam
from rmdnet_jax.training import config_checks, loop, metrics
from rmdnet_jax.run import workdir as workdir_lib


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
  workdir_lib.check_config(config, workdir, save=False)
  dataset = data.load(config.data)
  noisy, save_noisy_labels = noise.labels_for_run(config.noise, dataset, workdir)
  teacher = simsiam.load_teacher(config, dataset, workdir) if _needs_teacher_first(config, stages) else None
  # The run really starts: only now does the work directory take its config and labels.
  workdir_lib.check_config(config, workdir)
  save_noisy_labels()
  writer = metrics.create_writer(workdir, config.get('logging'))
  if jax.process_index() == 0:
    writer.write_hparams(config_files.flatten(json.loads(config.to_json_best_effort())))
  options = loop.Options.from_config(config)
  results = {
      'workdir': fileio.absolute(workdir),
      'dataset': dataset.name,
      'noise': config.noise.kind if config.noise.kind != 'human' else f'human/{config.noise.human_label}',
      'noise_rate': config.noise.rate,
      'method': config.method.name,
      'rmdnet': bool(config.method.distill),
      'seed': config.seed,
  }
  for name in stages:
    if name == 'rm':
      loop.train(simsiam.stage(config, dataset), workdir=workdir, writer=writer, options=options)
      results['rm_checkpoints'] = os.path.join(fileio.absolute(workdir), 'rm')
    elif name == 'teacher_knn':
      teacher = teacher or simsiam.load_teacher(config, dataset, workdir)
      results.update(simsiam.teacher_knn(config, dataset, teacher, writer))
    elif name == 'linear_probe':
      teacher = teacher or simsiam.load_teacher(config, dataset, workdir)
      results.update(linear_probe.teacher_monitors(config, dataset, teacher, writer))
    elif name == 'rgrl':
      if distill.needs_teacher(config):  # the teacher of this run's RM stage, restored once it is finished
        teacher = teacher or simsiam.load_teacher(config, dataset, workdir)
      stage = distill.stage(config, dataset, noisy, teacher, writer)
      loop.train(stage, workdir=workdir, writer=writer, options=options)
      results.update(stage.report)
      results['rgrl_checkpoints'] = os.path.join(fileio.absolute(workdir), 'rgrl')
  writer.write_summary(results)
  writer.close()
  if jax.process_index() == 0:
    fileio.write_text(os.path.join(workdir, 'results.json'), json.dumps(results, indent=2))
    print(format_summary(results), flush=True)
  return results


def _needs_teacher_first(config: ml_collections.ConfigDict, stages: list) -> bool:
  """Whether a stage needs an RM checkpoint before this run's RM stage (if any) would make one: such a teacher is
  restored, and so checked, before the run writes anything."""
  uses_teacher = {'teacher_knn', 'linear_probe'} | ({'rgrl'} if distill.needs_teacher(config) else set())
  for stage in stages:
    if stage == 'rm' and not config.relation.teacher_checkpoint:
      return False
    if stage in uses_teacher:
      return True
  return False


def format_summary(results: dict) -> str:
  rows = [(k, f'{v:.4f}' if isinstance(v, float) else str(v)) for k, v in results.items()]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k.ljust(width)}  {v}' for k, v in rows)
