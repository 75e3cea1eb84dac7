"""RM stage alone: SimSiam pretraining of a CIFAR ResNet-18 on CIFAR-10 (labels unused; kNN monitor only).

  python -m rmdnet_jax.main --config=configs/simsiam_cifar10.py --workdir=/tmp/simsiam_c10

Expected: kNN accuracy ~90% after 800 epochs (SimSiam CIFAR recipe, batch 512).
"""

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout


def get_config():
  config = default.get_config()
  config.stages = 'rm'
  config.noise.kind = 'none'
  config.noise.rate = 0.0
  return config
