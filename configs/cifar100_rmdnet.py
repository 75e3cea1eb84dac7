"""RMDNet on CIFAR-100 with 50% symmetric label noise: SimSiam (800 ep) then RGRL (200 ep).

python -m rmdnet_jax.main --config=configs/cifar100_rmdnet.py --workdir=/tmp/rmdnet_c100
"""

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout


def get_config():
  config = default.get_config()
  config.data.name = 'cifar100'
  config.data.num_classes = 100
  return config
