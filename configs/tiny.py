"""Both stages end to end in well under a minute on a CPU: tiny ResNet, synthetic 16x16 images, 2+2 epochs.

  python -m rmdnet_jax.main --config=configs/tiny.py --workdir=/tmp/rmdnet_tiny

Proves the plumbing only (synthetic images carry no signal); for real data add
--config.data.source=tfds --config.data.data_dir=DIR --config.data.synthetic_image_size=32.
"""

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout


def get_config():
  config = default.get_config()
  config.data.source = 'synthetic'
  config.data.synthetic_train_size = 256
  config.data.synthetic_test_size = 128
  config.data.synthetic_image_size = 16
  config.model.name = config.student.name = 'resnet_tiny'
  config.model.width = config.student.width = 8
  config.model.projector_dim = 64
  config.model.predictor_dim = 32
  for stage in (config.rm, config.rgrl):
    stage.epochs = 2
    stage.batch_size = 64
  config.rm.knn_k = 20
  config.eval_batch_size = 128
  return config
