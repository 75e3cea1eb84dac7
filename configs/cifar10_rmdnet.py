"""RMDNet on CIFAR-10 with 50% symmetric label noise: SimSiam (800 ep) then RGRL (200 ep).

python -m rmdnet_jax.main --config=configs/cifar10_rmdnet.py --workdir=/tmp/rmdnet_c10
# CE baseline, everything else identical:
python -m rmdnet_jax.main --config=configs/cifar10_rmdnet.py --config.method.distill=False --workdir=/tmp/ce_c10
"""

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout


def get_config():
  return default.get_config()
