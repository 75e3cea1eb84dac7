"""The evidence ladder a 2-core CPU can run (README, "Evidence"; results/ladder/README.md).

Real CIFAR-10, 50% symmetric noise, ResNet-18 at width 8 for teacher and student. RGRL trains on the first 512
training images for 160 epochs (640 steps at batch 128), long enough for CE to memorise the mislabelled half (at
1,024 images for 60 epochs CE memorised only 17.6% of them); test accuracy every 8 epochs, with the memorisation
curve. The teachers come from other runs of this config:
  * SimSiam (RM stage) on the first 4,096 training images (labels unused), the CIFAR recipe at batch 128:
      python -m rmdnet_jax.main --config=configs/cifar10_cpu_ladder.py --config.data.data_dir=DIR \
          --config.stages=rm --config.data.train_subset=4096 --workdir=W/simsiam
  * clean-label supervised teachers (diagnostic only): the RGRL stage with --config.noise.kind=none and
    --config.method.distill=False; their rgrl/ directory is a teacher (relation.teacher_checkpoint).

  launch/grid.sh --cells=results/ladder/cells.txt --base=workdirs/ladder --data-dir=DIR

runs every cell of the ladder, and `python -m rmdnet_jax.report.results --ladder results/ladder/runs` its table and figure.
"""

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout


def get_config():
  config = default.get_config()
  config.data.train_subset = 512
  config.data.test_subset = 1000
  config.model.width = config.student.width = 8
  config.model.projector_dim = 512
  config.model.predictor_dim = 128
  config.rm.epochs = 100
  config.rm.batch_size = 128
  config.rm.eval_every_epochs = 5
  config.rm.checkpoint_every_epochs = 5
  config.rm.knn_k = 50
  config.rgrl.epochs = 160
  config.rgrl.batch_size = 128
  config.rgrl.eval_every_epochs = 8
  config.rgrl.checkpoint_every_epochs = 40
  config.eval_batch_size = 512
  config.max_to_keep = 30
  config.logging.progress_bar = False
  return config
