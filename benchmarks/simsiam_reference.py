"""An independent PyTorch SimSiam, trained side by side with this project's RM stage (issue 19, item 2).

  python -m benchmarks.simsiam_reference --config=configs/cifar10_cpu_ladder.py \
      --config.data.train_subset=4096 --config.data.data_dir=DIR --config.rm.epochs=10 --config.seed=0 \
      --out=workdirs/simsiam_reference/torch_s0

It takes the very same `--config` and `--config.KEY=VALUE` flags as `python -m rmdnet_jax.main`, so the two sides
read one config and cannot drift: data (`data.load`, the project's own reader: the same first `train_subset`
training and `test_subset` test images), network (`benchmarks.torch_peer.SimSiamNet`: the JAX networks written in
PyTorch, `model.init` initialisers), augmentation (`rm.augment`), optimizer and schedule (`rm.*`), kNN monitor
(`rm.knn_k`, `rm.knn_temperature`, `relation.teacher_layer`). Everything that trains is torch and torchvision:

* views: torchvision `transforms.v2` per image, on float images in [0, 1] as the JAX side works:
  RandomResizedCrop(H, scale=(crop_scale_min, 1)) -> RandomHorizontalFlip -> RandomApply(ColorJitter, jitter_prob)
  -> RandomGrayscale -> Normalize(the dataset's mean and std), made by `--workers` DataLoader processes. torchvision's
  crop retries up to 10 boxes and falls back to a centre crop where `augment.sample_crop_box` clips one box, and
  crops whole pixels where the JAX crop is continuous: the known differences of distribution.
* data order: a fresh permutation per epoch from torch's generator (seeded by seed and epoch).
* loss: 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1)), D the negative mean cosine (`torch_peer.simsiam_loss`); one forward
  per view (BatchNorm statistics per view), as `simsiam.simsiam_step`.
* SGD (momentum, coupled weight decay on every parameter, as torch's default and `train_state.make_optimizer`),
  peak lr `rm.learning_rate` (x batch/256 with `rm.scale_lr_by_batch`), the cosine of
  `train_state.learning_rate_schedule` set before every step (optax's cosine_decay_schedule, optional linear
  warm-up), the last incomplete batch of an epoch dropped.
* kNN monitor: `metrics.knn_predict`'s weighted kNN written in torch: the backbone's pooled features (BatchNorm in
  eval mode) of the un-augmented training images as the bank, the CLEAN labels, cosine similarity, the k nearest
  vote with weight exp(sim / T); accuracy on the test images.

Logged per epoch in OUT/metrics.jsonl, as the JAX run's rm/loss, rm/z_std, rm/knn_accuracy: the mean loss over the
epoch's steps, the mean z_std (per-dimension std over the batch of the l2-normalised projection of the first view,
averaged over dimensions; each step's value before its update), and the kNN accuracy after the epoch. Epoch 0 is
the initial network: its kNN accuracy, and its loss and z_std over one epoch of batches without updates (under
`torch.random.fork_rng`, so the training stream is the same with or without it; BatchNorm's running statistics
are restored). `python -m benchmarks.simsiam_side_by_side jax-init` gives the JAX side the same epoch 0.
OUT/run.json holds the config, the versions, the host, the command and the wall time.

Needs torch and torchvision (benchmarks/requirements.txt) beside the project's requirements.
"""

import datetime
import functools
import json
import math
import os
import sys
import time
from typing import Optional

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from absl import app, flags
from ml_collections import config_flags
from torchvision.transforms import v2

from benchmarks import torch_peer
from rmdnet_jax.datasets import data

# The crop of the views: 'torchvision' (the recipe, v2.RandomResizedCrop) or 'jax' (an ablation: JaxBoxCrop).
CROPS = ('torchvision', 'jax')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py), as rmdnet_jax.main.', lock_config=True)
flags.DEFINE_string('out', None, 'Directory for metrics.jsonl and run.json.')
flags.DEFINE_integer('threads', 0, 'torch.set_num_threads of the training process (0: torch default).')
flags.DEFINE_integer('workers', 1, 'DataLoader worker processes making the views (0: in the training process).')
flags.DEFINE_enum('crop', 'torchvision', CROPS, "Ablation: 'jax' crops the views as augment.random_resized_crop.")
flags.DEFINE_enum(
    'padding', 'torch', torch_peer.PADDINGS, "Ablation: 'same' pads the convolutions as models (XLA SAME)."
)


def _interpolation_matrix(start, length, out_size: int, in_size: int) -> torch.Tensor:
  """`augment._linear_interp_matrix`: bilinear weights [out_size, in_size] of a continuous interval."""
  centres = start + (torch.arange(out_size, dtype=torch.float32) + 0.5) * (length / out_size) - 0.5
  centres = centres.clamp(0.0, in_size - 1.0)
  return (1.0 - (centres[:, None] - torch.arange(in_size, dtype=torch.float32)[None, :]).abs()).clamp(min=0.0)


class JaxBoxCrop(torch.nn.Module):
  """`augment.random_resized_crop` in torch, for an ablation: one box draw (area fraction uniform on `scale`, log
  aspect uniform on log `ratio`), its sides clipped to the image instead of torchvision's up to 10 retries, a
  continuous box resampled bilinearly by interpolation matrices. Its crops are larger on average (mean area
  fraction 0.593 against torchvision's 0.551 at scale (0.2, 1))."""

  def __init__(self, scale, ratio=(3 / 4, 4 / 3)):
    super().__init__()
    self.scale, self.ratio = scale, ratio

  def forward(self, image: torch.Tensor) -> torch.Tensor:
    return self.crop(image, torch.rand(4))

  def crop(self, image: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The crop of `image` [C, H, W] given the four uniforms [4] of `augment.sample_crop_box`."""
    _, height, width = image.shape
    area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
    log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u[1])
    crop_w = torch.sqrt(area * aspect * height * width).clamp(1.0, float(width))
    crop_h = torch.sqrt(area / aspect * height * width).clamp(1.0, float(height))
    rows = _interpolation_matrix(u[2] * (height - crop_h), crop_h, height, height)
    cols = _interpolation_matrix(u[3] * (width - crop_w), crop_w, width, width)
    return torch.einsum('oh,chw,pw->cop', rows, image, cols)


def view_transform(
    augment_config: ml_collections.ConfigDict, mean, std, image_size: int, crop: str = 'torchvision'
) -> v2.Compose:
  """One SimSiam view of one float image [3, H, W] in [0, 1], from `config.rm.augment` (torchvision)."""
  aug = augment_config
  if crop not in CROPS:
    raise ValueError(f'Unknown crop {crop!r}; use one of {CROPS}.')
  if crop == 'jax':
    first = JaxBoxCrop((aug.crop_scale_min, 1.0))
  else:
    first = v2.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0), antialias=True)
  return v2.Compose(
      [
          first,
          v2.RandomHorizontalFlip(aug.flip_prob),
          v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)], p=aug.jitter_prob),
          v2.RandomGrayscale(aug.grayscale_prob),
          v2.Normalize(list(mean), list(std)),
      ]
  )


def learning_rate(rm_config: ml_collections.ConfigDict, steps_per_epoch: int, step: int) -> float:
  """`train_state.learning_rate_schedule` at `step` (0-based): optax's cosine_decay_schedule (alpha 0) over the
  stage, or warmup_cosine_decay_schedule (linear from 0, then cosine) when `warmup_epochs` is set."""
  peak = rm_config.learning_rate * (rm_config.batch_size / 256 if rm_config.scale_lr_by_batch else 1.0)
  total = rm_config.epochs * steps_per_epoch
  warmup = int(rm_config.warmup_epochs * steps_per_epoch)
  if warmup:
    if step < warmup:
      return peak * step / warmup
    decay_steps = max(total, warmup + 1) - warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps))
  total = max(total, 1)
  return peak * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


class TwoViews(torch.utils.data.Dataset):
  """Two independent views of each image [3, H, W] of `images` (float in [0, 1])."""

  def __init__(self, images: torch.Tensor, transform):
    self.images, self.transform = images, transform

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    image = self.images[index]
    return self.transform(image), self.transform(image)


def z_std(z: torch.Tensor) -> torch.Tensor:
  """`simsiam.simsiam_step`'s collapse monitor: per-dimension std (ddof 0) over the batch of the l2-normalised
  projections, averaged over dimensions; 1/sqrt(dim) when healthy, 0 when collapsed."""
  return torch.std(F.normalize(z.float(), dim=-1, eps=1e-8), dim=0, unbiased=False).mean()


def knn_predict(bank, bank_labels, queries, *, num_classes: int, k: int, temperature: float, chunk: int = 1024):
  """`metrics.knn_predict` in torch: each query's k most cosine-similar bank rows vote with weight exp(sim / T)."""
  bank = F.normalize(bank.float(), dim=-1, eps=1e-8)
  k = min(k, bank.shape[0])
  preds = []
  for i in range(0, len(queries), chunk):
    sims = F.normalize(queries[i : i + chunk].float(), dim=-1, eps=1e-8) @ bank.T
    top_sims, top_idx = sims.topk(k, dim=-1)
    votes = F.one_hot(bank_labels[top_idx], num_classes).float() * torch.exp(top_sims / temperature)[..., None]
    preds.append(votes.sum(dim=1).argmax(dim=-1))
  return torch.cat(preds) if preds else torch.zeros((0,), dtype=torch.long)


def simsiam_forward(net, view1: torch.Tensor, view2: torch.Tensor) -> tuple:
  """(loss, z_std) of one step on two views [B, 3, H, W], as `simsiam.simsiam_step`: two forward passes, not one
  over the concatenated views, so BatchNorm statistics are per view; z_std of the first view's projection."""
  out1, out2 = net(view1), net(view2)
  return torch_peer.simsiam_loss(out1['p'], out2['p'], out1['z'], out2['z']), z_std(out1['z'].detach())


@torch.no_grad()
def encoder_features(net, images: torch.Tensor, layer: str, batch_size: int) -> torch.Tensor:
  """The encoder's features of `layer` ('backbone' or 'projector') of normalised images, BatchNorm in eval mode
  (`simsiam.encoder_apply_fn`)."""
  was_training = net.training
  net.eval()
  outputs = []
  for i in range(0, len(images), batch_size):
    out = net.encode(images[i : i + batch_size])
    outputs.append(out['features'] if layer == 'backbone' else out['z'])
  net.train(was_training)
  return torch.cat(outputs)


def knn_accuracy(net, config, train_images, train_labels, test_images, test_labels, num_classes) -> float:
  """The kNN monitor (`simsiam.knn_monitor`): CLEAN labels, a monitor of the encoder, never a result."""
  layer, batch = config.relation.teacher_layer, config.eval_batch_size
  preds = knn_predict(
      encoder_features(net, train_images, layer, batch),
      train_labels,
      encoder_features(net, test_images, layer, batch),
      num_classes=num_classes,
      k=config.rm.knn_k,
      temperature=config.rm.knn_temperature,
  )
  return float((preds == test_labels).float().mean())


def _batch_norm_buffers(net) -> dict:
  return {k: v.clone() for k, v in net.state_dict().items() if 'running_' in k or 'num_batches_tracked' in k}


def check_supported(config: ml_collections.ConfigDict) -> None:
  """Refuses settings the reference does not implement (it trains float32 SimSiam, as the JAX default)."""
  if config.model.dtype != 'float32':
    raise ValueError(f'The reference trains in float32; got model.dtype={config.model.dtype!r}.')
  if config.relation.teacher_layer not in ('backbone', 'projector'):
    raise ValueError(f'Unknown relation.teacher_layer {config.relation.teacher_layer!r}.')


def train(
    config: ml_collections.ConfigDict,
    out: str,
    *,
    threads: int = 0,
    workers: int = 1,
    crop: str = 'torchvision',
    padding: str = 'torch',
    log=print,
) -> list:
  """Trains the reference for `config.rm.epochs`; writes OUT/metrics.jsonl and OUT/run.json; returns the rows.

  `crop` (`CROPS`) and `padding` (`torch_peer.PADDINGS`) are ablations; their defaults are the torchvision recipe.
  """
  check_supported(config)
  if threads:
    torch.set_num_threads(threads)
  os.makedirs(out, exist_ok=True)
  start = time.perf_counter()
  dataset = data.load(config.data)
  load_seconds = time.perf_counter() - start
  to_float = lambda x: torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
  train_float = to_float(dataset.train_images)  # [N, 3, H, W] in [0, 1]
  mean = torch.tensor(dataset.mean).view(1, 3, 1, 1)
  std = torch.tensor(dataset.std).view(1, 3, 1, 1)
  train_normalised = (train_float - mean) / std
  test_normalised = (to_float(dataset.test_images) - mean) / std
  train_labels = torch.from_numpy(np.asarray(dataset.train_labels, np.int64))
  test_labels = torch.from_numpy(np.asarray(dataset.test_labels, np.int64))
  rm = config.rm
  num_examples, batch = len(train_float), rm.batch_size
  steps_per_epoch = num_examples // batch
  if steps_per_epoch == 0:
    raise ValueError(f'rm.batch_size={batch} is larger than the {num_examples} training images.')
  transform = view_transform(rm.augment, dataset.mean, dataset.std, train_float.shape[-1], crop)

  torch.manual_seed(config.seed)
  net = torch_peer.SimSiamNet(config.model, padding).train()
  optimizer = torch.optim.SGD(
      net.parameters(),
      lr=learning_rate(rm, steps_per_epoch, 0),
      momentum=rm.momentum,
      weight_decay=rm.weight_decay,
      nesterov=rm.nesterov,
  )

  def epoch_order(epoch: int) -> torch.Tensor:
    # A pure function of (seed, epoch), as data.epoch_permutation, but torch's own generator.
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)

  two_views = TwoViews(train_float, transform)

  def batches(order: torch.Tensor):
    # torch's usual input pipeline: `workers` processes make the views while the network trains; each is seeded
    # from torch's generator when the epoch starts (so the views depend on `workers`, the run on the seed alone).
    # They are forked: this process imports JAX (for data.load and the networks' shapes) but never starts it.
    return torch.utils.data.DataLoader(
        two_views, batch_size=batch, sampler=order.tolist(), drop_last=True, num_workers=workers
    )

  def knn():
    return knn_accuracy(net, config, train_normalised, train_labels, test_normalised, test_labels, dataset.num_classes)

  rows = []
  metrics_path = os.path.join(out, 'metrics.jsonl')
  with open(metrics_path, 'w') as f:

    def write(row):
      rows.append(row)
      f.write(json.dumps(row) + '\n')
      f.flush()
      log(
          f"epoch {row['epoch']}: loss {row['loss']:.4f}, z_std {row['z_std']:.4f}, kNN {row['knn_accuracy']:.4f} "
          f"({row['train_seconds']:.0f} s train, {row['eval_seconds']:.0f} s kNN)"
      )

    # Epoch 0: the initial network over one epoch of batches, without updates.
    tick = time.perf_counter()
    saved_buffers = _batch_norm_buffers(net)
    losses, stds = [], []
    with torch.random.fork_rng(), torch.no_grad():
      for view1, view2 in batches(epoch_order(0)):
        loss, spread = simsiam_forward(net, view1, view2)
        losses.append(float(loss))
        stds.append(float(spread))
    net.load_state_dict(saved_buffers, strict=False)
    train_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    accuracy = knn()
    write(
        {
            'epoch': 0,
            'step': 0,
            'loss': float(np.mean(losses)),
            'z_std': float(np.mean(stds)),
            'knn_accuracy': accuracy,
            'learning_rate': learning_rate(rm, steps_per_epoch, 0),
            'train_seconds': train_seconds,
            'eval_seconds': time.perf_counter() - tick,
        }
    )

    step = 0
    for epoch in range(1, rm.epochs + 1):
      tick = time.perf_counter()
      losses, stds = [], []
      for view1, view2 in batches(epoch_order(epoch)):
        lr = learning_rate(rm, steps_per_epoch, step)
        for group in optimizer.param_groups:
          group['lr'] = lr
        loss, spread = simsiam_forward(net, view1, view2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        stds.append(float(spread))
        step += 1
      if not np.isfinite(np.mean(losses)):
        raise FloatingPointError(f'Non-finite loss in epoch {epoch}.')
      train_seconds = time.perf_counter() - tick
      every = rm.eval_every_epochs
      tick = time.perf_counter()
      accuracy = knn() if epoch == rm.epochs or (every and epoch % every == 0) else None
      write(
          {
              'epoch': epoch,
              'step': step,
              'loss': float(np.mean(losses)),
              'z_std': float(np.mean(stds)),
              'knn_accuracy': accuracy,
              'learning_rate': lr,  # the last step's, as the JAX log's rm/learning_rate
              'train_seconds': train_seconds,
              'eval_seconds': time.perf_counter() - tick,
          }
      )
  record = {
      'benchmark': 'simsiam_reference',
      'config': json.loads(config.to_json_best_effort()),
      'seed': config.seed,
      'steps': step,
      'steps_per_epoch': steps_per_epoch,
      'train_images': num_examples,
      'test_images': len(test_labels),
      'wall_seconds': time.perf_counter() - start,
      'data_load_seconds': load_seconds,
      'torch': torch.__version__,
      'torchvision': torchvision.__version__,
      'torch_num_threads': torch.get_num_threads(),
      'dataloader_workers': workers,
      'ablation': {'crop': crop, 'padding': padding},
      'python': sys.version.split()[0],
      'load_average_at_end': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': ' '.join(['python -m benchmarks.simsiam_reference'] + sys.argv[1:]),
  }
  with open(os.path.join(out, 'run.json'), 'w') as f:
    json.dump(record, f, indent=2)
  return rows


def main(argv: Optional[list] = None):
  del argv
  if not FLAGS.out:
    raise app.UsageError('--out=DIR is required (where metrics.jsonl and run.json go).')
  train(
      FLAGS.config,
      FLAGS.out,
      threads=FLAGS.threads,
      workers=FLAGS.workers,
      crop=FLAGS.crop,
      padding=FLAGS.padding,
      log=functools.partial(print, flush=True),
  )


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
