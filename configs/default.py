"""Every key of an rmdnet_jax run, with the paper-notes defaults (../shared/paper/rmdnet.md).

The other configs import this and override a few keys. Command (RMDNet on CIFAR-10, 50% symmetric noise):

  python -m rmdnet_jax.main --config=configs/cifar10_rmdnet.py --workdir=/tmp/rmdnet

Keys marked "Reconstruction" implement choices the paper's available text does not fix.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # one seed for init, augmentation and data order (noise has its own)
  config.stages = 'rm,rgrl'  # comma-separated stages to run, in order: rm (SimSiam), rgrl (distill)

  config.data = ml_collections.ConfigDict()
  config.data.source = 'tfds'  # tfds | npz | synthetic (random images: smoke runs, benchmarks)
  config.data.name = 'cifar10'  # cifar10 | cifar100 | cifar10_n | cifar100_n (CIFAR-N: + human labels)
  config.data.num_classes = 10  # must match data.name (100 for cifar100)
  config.data.data_dir = ''  # tfds data_dir ('' = tfds default, ~/tensorflow_datasets; gs:// works)
  config.data.npz_path = ''  # with source=npz: x_train, y_train, x_test, y_test (+ coarse_train)
  config.data.cifar_n_labels = ''  # CIFAR-N label file (CIFAR-10_human.pt, CIFAR-100_human.pt or .npz) joined
  # by id to cifar10/cifar100 records; '' = none (cifar10_n carries its own)
  config.data.train_subset = 0  # >0: use only the first N training examples (id order)
  config.data.test_subset = 0  # >0: evaluate on the first N test examples only
  config.data.synthetic_train_size = 1024
  config.data.synthetic_test_size = 256
  config.data.synthetic_image_size = 32
  config.data.synthetic_seed = 0
  # True: the training set is put on every device once and the host sends only each batch's row numbers
  # (rmdnet_jax/datasets/device_data.py); False: the host ships the images every step. Same batches, same results.
  config.data.resident_on_device = True

  config.noise = ml_collections.ConfigDict()
  config.noise.kind = 'symmetric'  # none | symmetric | asymmetric | pairflip | instance | human (CIFAR-N)
  config.noise.rate = 0.5  # flip probability r in [0, 1]; ignored by human noise (its rate is given)
  config.noise.human_label = ''  # kind=human: aggre | worst | random1-3 (CIFAR-10N), noisy (CIFAR-100N)
  config.noise.seed = 0  # noisy labels depend only on this seed and the clean labels
  config.noise.symmetric_from_all = False  # True: flip to any of the C classes (realised rate r(C-1)/C)
  config.noise.cifar100_grouping = 'superclass'  # asymmetric CIFAR-100: superclass | index_blocks

  # The RM network (SimSiam) and, frozen, the RGRL teacher.
  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet18'  # resnet18 | resnet34 | preact_resnet18 | resnet_tiny (tests)
  config.model.width = 64  # channels of the first stage
  config.model.projector_dim = 2048
  config.model.projector_layers = 2  # SimSiam's CIFAR recipe (its paper's appendix D); 3 is its ImageNet recipe
  config.model.predictor_dim = 512  # predictor bottleneck
  config.model.dtype = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  config.model.init = 'torch'  # torch (the PyTorch references' initialisers) | flax (flax defaults, before Dec 2026)
  config.model.zero_init_residual = False  # True: each residual block's last BN scale starts at 0 (BasicBlock only)

  # The RGRL student.
  config.student = ml_collections.ConfigDict()
  config.student.name = 'resnet18'  # the paper notes: same ResNet-18 as the teacher (option preact_resnet18)
  config.student.width = 64
  config.student.init = 'torch'  # torch | flax, as model.init

  # SimSiam's CIFAR recipe: lr 0.03 per 256 images (0.06 at batch 512), SGD momentum 0.9, wd 5e-4, cosine.
  config.rm = _stage(epochs=800, batch_size=512, learning_rate=0.03, scale_lr_by_batch=True)
  config.rm.augment = ml_collections.ConfigDict()
  config.rm.augment.crop_scale_min = 0.2
  config.rm.augment.brightness = 0.4
  config.rm.augment.contrast = 0.4
  config.rm.augment.saturation = 0.4
  config.rm.augment.hue = 0.1
  config.rm.augment.jitter_prob = 0.8
  config.rm.augment.grayscale_prob = 0.2
  config.rm.augment.flip_prob = 0.5
  config.rm.knn_k = 200  # kNN monitor (uses CLEAN train labels; a monitor, not a result)
  config.rm.knn_temperature = 0.1

  config.rgrl = _stage(epochs=200, batch_size=128, learning_rate=0.02, scale_lr_by_batch=False)
  config.rgrl.track_memorization = True  # each eval also predicts the train set: accuracy vs noisy / clean labels
  config.rgrl.augment = ml_collections.ConfigDict()
  config.rgrl.augment.pad = 4
  config.rgrl.augment.flip_prob = 0.5

  config.method = ml_collections.ConfigDict()
  config.method.name = 'ce'  # the noisy-label method whose loss RMDNet regularises
  config.method.distill = True  # the RMDNet switch: False = the method alone (e.g. the CE baseline)
  # Each method's settings live in its own block, config.method.<name> (ce has none); every block is kept
  # whatever method.name is, so a run's config.json records them all.
  config.method.gce = ml_collections.ConfigDict()
  config.method.gce.q = 0.7  # Box-Cox exponent q in (0, 1] (0 -> CE, 1 -> MAE; Zhang & Sabuncu)
  config.method.sce = ml_collections.ConfigDict()
  config.method.sce.alpha = 0.1  # weight of CE (Wang et al.: 0.1 for CIFAR-10, 6.0 for CIFAR-100)
  config.method.sce.beta = 1.0  # weight of the reverse CE
  config.method.sce.log_zero = -4.0  # A, the value of log 0 in the reverse CE's one-hot target
  # Co-teaching and JoCoR drop the forget_rate fraction of largest-loss examples of each global batch, the rate
  # ramping from 0 over forget_gradual_epochs (Han et al.: forget_rate = noise rate, 10 epochs, exponent 1).
  config.method.coteaching = _forget_schedule()
  config.method.jocor = _forget_schedule()
  config.method.jocor.co_lambda = 0.9  # weight of the symmetric-KL co-regularisation (paper, CIFAR-10)
  config.method.elr = ml_collections.ConfigDict()
  config.method.elr.reg_lambda = 3.0  # regulariser weight lambda (Liu et al.: 3 CIFAR-10, 7 CIFAR-100)
  config.method.elr.beta = 0.7  # target momentum (0.7 CIFAR-10, 0.9 CIFAR-100)
  config.method.dividemix = ml_collections.ConfigDict()
  config.method.dividemix.warmup_epochs = 10  # CE warm-up before the first GMM division (30 for CIFAR-100)
  config.method.dividemix.p_threshold = 0.5  # p(clean) above which an example is labelled
  config.method.dividemix.temperature = 0.5  # sharpening temperature
  config.method.dividemix.alpha = 4.0  # Beta(alpha, alpha) MixMatch coefficient
  config.method.dividemix.lambda_u = 25.0  # unlabelled-loss weight (Li et al. per noise; see methods/dividemix.py)
  config.method.dividemix.rampup_epochs = 16  # lambda_u ramps up over these epochs after warm-up
  config.method.dividemix.confidence_penalty = False  # negative-entropy penalty in warm-up (asymmetric noise)
  config.method.dividemix.gmm_iterations = 10  # EM iterations of the per-epoch GMM
  config.method.dividemix.gmm_tol = 1e-2
  config.method.dividemix.gmm_reg_covar = 5e-4

  # Reconstruction: EGA-style relation graph alignment (see docs/reconstruction.md).
  config.relation = ml_collections.ConfigDict()
  config.relation.K = 1.0  # weight of the relation terms
  config.relation.node_weight = 1.0  # w_node
  config.relation.edge_weight = 0.3  # w_edge
  config.relation.edge_kind = 'frobenius'  # frobenius | kl | mse
  config.relation.node_kind = 'cosine'  # cosine | frobenius (EGA's; the default before docs/evidence.md)
  config.relation.center = False  # True: Pearson-correlation graphs (rows centred)
  config.relation.batch_center = False  # True: centre each feature over the global batch before the graphs
  config.relation.normalize = 'none'  # none (EGA) | per_node: Frobenius terms divided by the global batch B
  config.relation.edge_topk = 0  # kl only: neighbours per node (0 = all B-1)
  config.relation.temperature = 0.5  # kl only
  config.relation.teacher_layer = 'backbone'  # backbone (pooled features) | projector
  config.relation.projection_head = 'linear'  # phi: linear | mlp
  config.relation.student_init = 'random'  # random | teacher (start from the teacher's backbone)
  config.relation.teacher_checkpoint = ''  # RM checkpoint dir ('' = WORKDIR/rm)
  config.relation.teacher_step = 0  # RM step to take the teacher from (0 = the latest checkpoint)

  # Linear probe of the frozen teacher (stage linear_probe): SimSiam's CIFAR protocol on the teacher's backbone
  # features of the un-augmented images, standardised; a linear classifier trained with the CLEAN labels by SGD
  # (cosine schedule). A monitor of the teacher beside its kNN accuracy, never a noisy-label result.
  config.linear_probe = ml_collections.ConfigDict()
  config.linear_probe.epochs = 100
  config.linear_probe.batch_size = 256
  config.linear_probe.learning_rate = 0.1
  config.linear_probe.momentum = 0.9
  config.linear_probe.weight_decay = 0.0

  # Watching a run (docs/runs.md). None of these changes the results: a run resumes with other values.
  config.logging = ml_collections.ConfigDict()
  config.logging.progress_bar = True  # tqdm bar when stderr is an interactive terminal; else log lines
  config.logging.term_gradient_norms = False  # diagnostic: log each loss term's gradient norm (3 backward passes)
  config.logging.progress_every_secs = 60.0  # without a bar: one progress line this often (and at a stage's end)
  config.logging.verbose = False  # True: also every logged scalar on the console, one `[step] name=value` line
  config.logging.wandb_project = ''  # Weights & Biases project; '' = no W&B (needs `pip install wandb`)
  config.logging.wandb_entity = ''  # W&B team or user ('' = your default entity)
  config.logging.wandb_mode = 'online'  # online | offline (no network; `wandb sync WORKDIR/wandb/...` later)

  config.eval_batch_size = 1024
  config.log_every_steps = 0  # 0 = once per epoch
  config.max_to_keep = 3  # checkpoints kept per stage
  config.allow_config_change = False  # True: resume a workdir whose saved config differs
  return config


def _stage(*, epochs, batch_size, learning_rate, scale_lr_by_batch) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict()
  stage.epochs = epochs
  stage.batch_size = batch_size  # global batch over all devices and hosts
  stage.learning_rate = learning_rate  # peak; with scale_lr_by_batch, per 256 images
  stage.scale_lr_by_batch = scale_lr_by_batch
  stage.warmup_epochs = 0.0  # may be fractional (warm-up over part of an epoch)
  stage.momentum = 0.9
  stage.nesterov = False
  stage.weight_decay = 5e-4
  stage.eval_every_epochs = 1  # test accuracy (RGRL) / kNN accuracy (RM); 0 = only at the end
  stage.checkpoint_every_epochs = 1  # plus at the end and on SIGTERM
  return stage


def _forget_schedule() -> ml_collections.ConfigDict:
  schedule = ml_collections.ConfigDict()
  schedule.forget_rate = 0.5
  schedule.forget_gradual_epochs = 10
  schedule.forget_exponent = 1.0
  return schedule
