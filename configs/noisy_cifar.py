"""One cell of the noisy-CIFAR grid, named by a parameter string instead of a chain of overrides.

  python -m rmdnet_jax.main --config=configs/noisy_cifar.py:dataset=cifar10,noise=sym50,method=gce,rmdnet=true,seed=1 \
      --workdir=/tmp/c10_sym50_gce_rmdnet_s1

Keys (all optional; the defaults are those of configs/default.py: cifar10, sym50, ce, rmdnet=true, seed=0):
  dataset  cifar10 | cifar100
  noise    sym20 | sym50 | sym80 | sym90 | asym40 | pair45 | inst20 | inst40 | none, or CIFAR-N real human
           noise: c10n_aggre | c10n_worst | c10n_random1 | c10n_random2 | c10n_random3 (dataset cifar10, the
           default for them) and c100n_noisy (dataset cifar100). These read tfds' cifar10_n / cifar100_n
           (data.name); `--config.data.name=cifar10 --config.data.cifar_n_labels=FILE` takes the labels from a
           CIFAR-N file instead (docs/data.md, "CIFAR-N").
  method   a name in rmdnet_jax.methods.METHODS; the methods' config.method.<name>.* keys take their authors'
           settings for the cell (Co-teaching's forget rate = the noise rate, CIFAR-100 values of SCE/ELR/DivideMix,
           DivideMix's lambda_u per noise: see set_method_settings)
  rmdnet   true | false (false = the method alone, config.method.distill=False)
  seed     an integer, used for config.seed and config.noise.seed
Any --config.KEY=VALUE override still applies on top.
"""

import ml_collections

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout
from rmdnet_jax import methods
from rmdnet_jax.datasets import data

DATASETS = {'cifar10': 10, 'cifar100': 100}
NOISES = {
    'sym20': ('symmetric', 0.2),
    'sym50': ('symmetric', 0.5),
    'sym80': ('symmetric', 0.8),
    'sym90': ('symmetric', 0.9),
    'asym40': ('asymmetric', 0.4),
    'pair45': ('pairflip', 0.45),
    'inst20': ('instance', 0.2),
    'inst40': ('instance', 0.4),
    'none': ('none', 0.0),
}
# CIFAR-N tokens: (dataset they belong to, noise.human_label).
HUMAN_NOISES = {
    'c10n_aggre': ('cifar10', 'aggre'),
    'c10n_worst': ('cifar10', 'worst'),
    'c10n_random1': ('cifar10', 'random1'),
    'c10n_random2': ('cifar10', 'random2'),
    'c10n_random3': ('cifar10', 'random3'),
    'c100n_noisy': ('cifar100', 'noisy'),
}
# Realised rates of the CIFAR-N label sets (Wei et al.; measured on the files, see docs/data.md, "CIFAR-N"): the noise
# rate that Co-teaching and JoCoR assume known.
HUMAN_RATES = data.PUBLISHED_NOISE_RATES
# DivideMix's lambda_u per cell (Li et al., ICLR 2020, CIFAR settings); other cells take the dataset's default.
DIVIDEMIX_LAMBDA_U = {
    'cifar10': {'sym20': 0.0, 'sym50': 25.0, 'sym80': 25.0, 'sym90': 50.0, 'asym40': 0.0},
    'cifar100': {'sym20': 25.0, 'sym50': 150.0, 'sym80': 150.0, 'sym90': 150.0},
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
      raise ValueError(
          f'noisy_cifar: {item!r} is not KEY=VALUE with KEY one of {", ".join(KEYS)}, e.g. '
          'configs/noisy_cifar.py:dataset=cifar10,noise=sym50,method=ce,rmdnet=true,seed=0.'
      )
    if key in params:
      raise ValueError(f'noisy_cifar: {key} is given twice ({params[key]!r} and {value!r}); give each key once.')
    choices = {
        'dataset': list(DATASETS),
        'noise': list(NOISES) + list(HUMAN_NOISES),
        'method': sorted(methods.METHODS),
        'rmdnet': list(BOOLS),
    }.get(key)
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
  noise = params.get('noise')
  if noise in HUMAN_NOISES:
    dataset, human_label = HUMAN_NOISES[noise]
    if params.get('dataset', dataset) != dataset:
      raise ValueError(
          f'noisy_cifar: noise={noise} is CIFAR-{dataset[5:]}N, which belongs to dataset={dataset}, '
          f'not dataset={params["dataset"]}; use dataset={dataset} or drop the dataset key.'
      )
    # The CIFAR-N builders: the same images as cifar10/cifar100, plus the human label columns.
    config.data.name, config.data.num_classes = f'{dataset}_n', DATASETS[dataset]
    # rate 0: the human labels bring their own rate, and nothing should read a left-over 0.5 as this run's.
    config.noise.kind, config.noise.rate, config.noise.human_label = 'human', 0.0, human_label
  else:
    dataset = params.get('dataset', config.data.name)
    config.data.name = dataset
    config.data.num_classes = DATASETS[dataset]
    if noise is not None:
      config.noise.kind, config.noise.rate = NOISES[noise]
  config.method.name = params.get('method', config.method.name)
  config.method.distill = BOOLS[params.get('rmdnet', 'true')]
  set_method_settings(config, dataset, noise or 'sym50')
  if 'seed' in params:
    # One seed names one replicate: init, data order and the noisy labels all change together.
    config.seed = config.noise.seed = int(params['seed'])
  return config


def set_method_settings(config: ml_collections.ConfigDict, dataset: str, noise: str) -> None:
  """The methods' published per-dataset and per-noise settings, so that every cell runs each method as its
  authors did (all of them, whatever config.method.name is, so a cell's config records them)."""
  m = config.method
  # Co-teaching / JoCoR assume the noise rate known.
  rate = HUMAN_RATES[config.noise.human_label] if config.noise.kind == 'human' else config.noise.rate
  m.coteaching.forget_rate = m.jocor.forget_rate = rate
  if dataset == 'cifar100':
    m.sce.alpha = 6.0  # Wang et al. 2019
    m.elr.reg_lambda, m.elr.beta = 7.0, 0.9  # Liu et al. 2020
    m.dividemix.warmup_epochs = 30  # Li et al. 2020
  m.dividemix.lambda_u = DIVIDEMIX_LAMBDA_U[dataset].get(noise, 25.0 if dataset == 'cifar10' else 150.0)
  m.dividemix.confidence_penalty = config.noise.kind == 'asymmetric'
