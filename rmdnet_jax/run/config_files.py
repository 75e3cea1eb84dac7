"""The config files: the `configs/*.py` a run names (from a source checkout or the installed package), and the
WORKDIR/config.json it saves, read back with today's keys.

The wheel ships `configs/*.py` as `rmdnet_jax/configs/` (no top-level `configs` package lands in site-packages;
the configs import `default` from either place). `--config=configs/tiny.py` names the file in the current
directory when there is one, as always; otherwise the same file of the installed package (or of the source tree
this `rmdnet_jax` was imported from), so the config paths of the README and docs/ work from any directory.
"""

import json
import os
import sys
from typing import Optional, Sequence

from rmdnet_jax import fileio

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # rmdnet_jax/ (this file is in run/)
# Where `configs/NAME.py` may live besides the current directory: in the wheel, then in a source checkout.
SEARCH_DIRS = (os.path.join(_PACKAGE, 'configs'), os.path.join(os.path.dirname(_PACKAGE), 'configs'))


def packaged_path(name: str) -> str:
  """The installed (or source-tree) path of config `name` ('tiny' or 'tiny.py'); FileNotFoundError if none."""
  name = name if name.endswith('.py') else name + '.py'
  for directory in SEARCH_DIRS:
    candidate = os.path.join(directory, name)
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f'No config {name} in {" or ".join(SEARCH_DIRS)}.')


def resolve(spec: str) -> str:
  """`configs/NAME.py[:params]` -> the packaged file when ./configs/NAME.py does not exist; anything else as is."""
  path, colon, params = spec.partition(':')
  if os.path.exists(path) or os.path.isabs(path):
    return spec
  parts = os.path.normpath(path).split(os.sep)
  if len(parts) != 2 or parts[0] != 'configs':
    return spec
  try:
    return packaged_path(parts[1]) + colon + params
  except FileNotFoundError:
    return spec  # config_flags then names the missing file


def resolve_argv(argv: Sequence[str], flag: str = 'config') -> list:
  """`argv` with the value of `--config=...` (or `--config ...`) resolved."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(f'--{flag}='):
      out[i] = f'--{flag}=' + resolve(arg[len(flag) + 3 :])
    elif arg == f'--{flag}' and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out


def resolve_sys_argv(flag: str = 'config') -> None:
  sys.argv[:] = resolve_argv(sys.argv, flag)


# ---------------------------------------------------------------------------------------------------------------
# WORKDIR/config.json: the config a run saved, flattened to dotted keys and brought up to date. Free of JAX, so
# that the results table reads many runs quickly.

SAVED_CONFIG = 'config.json'

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
    'logging.verbose',
    'logging.term_gradient_norms',
    'logging.wandb_project',
    'logging.wandb_entity',
    'logging.wandb_mode',
)


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: a nested (config) dict with dotted keys."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def unflatten(flat: dict) -> dict:
  """The inverse of `flatten`: {'a.b': 1} -> {'a': {'b': 1}}."""
  tree = {}
  for key, value in flat.items():
    *sections, leaf = key.split('.')
    node = tree
    for section in sections:
      node = node.setdefault(section, {})
    node[leaf] = value
  return tree


def read_saved_config(workdir: str) -> Optional[dict]:
  """WORKDIR/config.json flattened to dotted keys and brought up to date (`upgrade_saved_config`: renamed keys,
  keys added later), or None when there is none. ValueError: the file is not JSON."""
  path = os.path.join(workdir, SAVED_CONFIG)
  if not fileio.exists(path):
    return None
  return upgrade_saved_config(flatten(json.loads(fileio.read_text(path))))


# Keys added after some work directories were made, with the value that gives the behaviour those runs had: a saved
# config.json without the key had this value.
KEYS_ADDED_LATER = {
    'relation.batch_center': False,
    'relation.normalize': 'none',
    'relation.teacher_step': 0,
    # Before the SimSiam recipe was checked against a PyTorch reference, every network started from flax's
    # initialisers and no residual block was zero-initialised.
    'model.init': 'flax',
    'model.zero_init_residual': False,
    'student.init': 'flax',
}

# Keys whose default changed after some work directories were made (configs/default.py says why): a run resumed
# in such a directory with today's default keeps the value it was started with, so the same command resumes it.
# A value set explicitly to something else is a config change, refused as any other.
DEFAULTS_CHANGED = (
    'rm.learning_rate',  # 0.06 -> 0.03 per 256 images (SimSiam's CIFAR recipe)
    'model.projector_layers',  # 3 -> 2 (SimSiam's CIFAR recipe)
    'model.init',  # flax -> torch
    'model.zero_init_residual',
    'student.init',  # flax -> torch
    'relation.node_kind',  # frobenius -> cosine (the teacher-quality ladder, docs/evidence.md)
)

# Old key -> today's key: the method settings were flat keys `method.<name>_<setting>` before they were nested.
RENAMED_KEYS = {
    'method.gce_q': 'method.gce.q',
    'method.sce_alpha': 'method.sce.alpha',
    'method.sce_beta': 'method.sce.beta',
    'method.sce_log_zero': 'method.sce.log_zero',
    'method.jocor_lambda': 'method.jocor.co_lambda',
    'method.elr_lambda': 'method.elr.reg_lambda',
    'method.elr_beta': 'method.elr.beta',
    **{
        f'method.dividemix_{key}': f'method.dividemix.{key}'
        for key in (
            'warmup_epochs',
            'p_threshold',
            'temperature',
            'alpha',
            'lambda_u',
            'rampup_epochs',
            'confidence_penalty',
            'gmm_iterations',
            'gmm_tol',
            'gmm_reg_covar',
        )
    },
}
# Old keys that Co-teaching and JoCoR shared, now one in each method's block. The old value was both methods'
# setting, so both blocks get it: the block of the method the run used (method.name) has the run's value, and the
# other block the value today's config of the same cell has (a noisy_cifar cell sets both to the noise rate).
SPLIT_KEYS = {
    f'method.{key}': (f'method.coteaching.{key}', f'method.jocor.{key}')
    for key in ('forget_rate', 'forget_gradual_epochs', 'forget_exponent')
}


def renamed_keys(key: str) -> tuple:
  """Today's key(s) for an old key ('method.gce_q' -> ('method.gce.q',)); () for any other key."""
  return SPLIT_KEYS.get(key) or ((RENAMED_KEYS[key],) if key in RENAMED_KEYS else ())


def kept_saved_values(saved: dict, current: dict, defaults: dict) -> dict:
  """{key: saved value} of the DEFAULTS_CHANGED keys a resumed run keeps: those the run has at today's default
  (`defaults`, flattened configs/default.py) while its work directory saved another value."""
  return {
      key: saved[key]
      for key in DEFAULTS_CHANGED
      if key in saved and saved[key] != current.get(key) and current.get(key) == defaults.get(key)
  }


def upgrade_saved_config(flat: dict) -> dict:
  """A saved config flattened to dotted keys ({'method.gce_q': 0.7, ...}) with today's keys: old keys under
  their new names (RENAMED_KEYS, SPLIT_KEYS; a key also saved under today's name keeps that value) and the
  KEYS_ADDED_LATER filled in where missing."""
  out = {key: value for key, value in flat.items() if not renamed_keys(key)}
  for old, value in flat.items():
    for new in renamed_keys(old):
      out.setdefault(new, value)
  return {**KEYS_ADDED_LATER, **out}


def renamed_override_message(argv) -> str | None:
  """The one sentence for a `--config.KEY=VALUE` in `argv` that names an old key, else None."""
  for arg in argv:
    key = arg.split('=', 1)[0].removeprefix('--config.') if arg.startswith('--config.') else ''
    if renamed_keys(key):
      new = ' or '.join(f'--config.{k}' for k in renamed_keys(key))
      return (
          f"--config.{key} is now {new}: each method's settings live under its name (configs/default.py lists "
          'every key).'
      )
  return None
