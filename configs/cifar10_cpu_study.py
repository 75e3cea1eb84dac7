"""The reduced real-data study that a 2-core CPU can run: when does RMDNet help? (docs/evidence.md).

Real CIFAR-10, the first 4,096 training images and 1,000 test images, 50% symmetric noise, ResNet-18 at width 16,
batch 128 in both stages, projector 512 / predictor 128; RM (SimSiam) 20 epochs, RGRL 10 epochs (test accuracy each
epoch; the memorisation of the mislabelled examples measured once, at the end).

  python -m rmdnet_jax.main --config=configs/cifar10_cpu_study.py --config.data.data_dir=DIR --workdir=W

`launch/grid.sh --grid=study --base=workdirs/study --data-dir=DIR` runs the whole study (one RM run whose epoch-5
and epoch-20 checkpoints are the two teachers, the CE baseline and the RMDNet cells) and
`launch/study_report.sh workdirs/study DIR` writes its table, figure and teacher geometry to results/cpu_study/.

Runtime on a 2-core CPU (Intel Xeon VM, shared with other jobs; results/cpu_study/wall_time.txt): 84 min of wall
time for all 15 cells, two or three at a time; the SimSiam run alone took 53 min and each RGRL cell 4-6 min.
"""

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout


def get_config():
  config = default.get_config()
  config.data.train_subset = 4096
  config.data.test_subset = 1000
  config.model.width = config.student.width = 16
  config.model.projector_dim = 512
  config.model.predictor_dim = 128
  config.rm.epochs = 20
  config.rm.batch_size = 128
  config.rgrl.epochs = 10
  config.rgrl.batch_size = 128
  config.rgrl.track_memorization = False
  config.relation.node_kind = 'frobenius'  # the default when the study ran (its cells name cosine where they use it)
  config.rm.knn_k = 50
  config.eval_batch_size = 512
  return config
