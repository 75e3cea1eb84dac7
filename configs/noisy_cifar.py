"""One cell of the noisy-CIFAR grid, named by a parameter string instead of a chain of overrides.

  python -m rmdnet_jax.main --config=configs/noisy_cifar.py:dataset=cifar10,noise=sym50,method=gce,rmdnet=true,seed=1 \
      --workdir=/tmp/c10_sym50_gce_rmdnet_s1

Keys (all optional; the defaults are those of configs/default.py: cifar10, sym50, ce, rmdnet=true, seed=0):
  dataset  cifar10 | cifar100
  noise    sym20 | sym50 | sym80 | sym90 | asym40 | pair45 | inst20 | inst40 | none
  method   a name in rmdnet_jax.methods.METHODS (its hyperparameters stay config.method.* keys)
  rmdnet   true | false (false = the method alone, config.method.distill=False)
  seed     an integer, used for config.seed and config.noise.seed
Any --config.KEY=VALUE override still applies on top.
"""
import ml_collections

from configs import default
from rmdnet_jax import methods

DATASETS = {'cifar10': 10, 'cifar100': 100}
NOISES = {
    'sym20': ('symmetric', 0.2), 'sym50': ('symmetric', 0.5), 'sym80': ('symmetric', 0.8),
    'sym90': ('symmetric', 0.9), 'asym40': ('asymmetric', 0.4), 'pair45': ('pairflip', 0.45),
    'inst20': ('instance', 0.2), 'inst40': ('instance', 0.4), 'none': ('none', 0.0),
}
BOOLS = {'true': True, 'false': False}
KEYS = ('dataset', 'noise', 'method', 'rmdnet', 'seed')


def parse(arg: str) -> dict:
  """Splits 'k=v,k=v' into a dict, refusing unknown keys, repeated keys and values outside each key's set.

  Args:
    arg: the parameter string ('' for all defaults).

  Returns:
    {key: raw string value}.

  Raises:
    ValueError: with one sentence naming the bad part and the valid choices.
  """
  params = {}
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition('=')
    key, value = key.strip(), value.strip()
    if not sep or key not in KEYS:
      raise ValueError(f'noisy_cifar: {item!r} is not KEY=VALUE with KEY one of {", ".join(KEYS)}, e.g. '
                       'configs/noisy_cifar.py:dataset=cifar10,noise=sym50,method=ce,rmdnet=true,seed=0.')
    if key in params:
      raise ValueError(f'noisy_cifar: {key} is given twice ({params[key]!r} and {value!r}); give each key once.')
    choices = {'dataset': list(DATASETS), 'noise': list(NOISES), 'method': sorted(methods.METHODS),
               'rmdnet': list(BOOLS)}.get(key)
    if choices is not None and value not in choices:
      raise ValueError(f'noisy_cifar: {key}={value!r} is not valid; choose one of {", ".join(choices)}.')
    if key == 'seed' and not (value.isdigit() or (value[:1] == '-' and value[1:].isdigit())):
      raise ValueError(f'noisy_cifar: seed={value!r} is not valid; give an integer, e.g. seed=0.')
    params[key] = value
  return params


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """configs/default.py with the parameter string `arg` applied (see the module docstring)."""
  params = parse(arg)
  config = default.get_config()
  dataset = params.get('dataset', config.data.name)
  config.data.name = dataset
  config.data.num_classes = DATASETS[dataset]
  if 'noise' in params:
    config.noise.kind, config.noise.rate = NOISES[params['noise']]
  config.method.name = params.get('method', config.method.name)
  config.method.distill = BOOLS[params.get('rmdnet', 'true')]
  if 'seed' in params:
    # One seed names one replicate: init, data order and the noisy labels all change together.
    config.seed = config.noise.seed = int(params['seed'])
  return config
