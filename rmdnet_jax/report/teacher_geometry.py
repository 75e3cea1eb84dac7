"""How a teacher's embeddings sit, and whether the node term can be met by aligning the student with them.

  python -m rmdnet_jax.report.teacher_geometry --config=configs/cifar10_cpu_study.py --config.data.data_dir=DIR \
      --config.relation.teacher_checkpoint=W/rm [--config.relation.teacher_step=N] --out=geometry.json

For one batch of training images (un-augmented, the first `--batch` of the run's training set) and each graph form
(teacher layer x centring), it reports the mean off-diagonal cosine of the teacher graph, the share of the batch's
variance (features centred over the batch) on its top singular direction, and the node term
||N - I||_F of a student that copies the teacher exactly (s_i = t_i), beside sqrt(B), the node term of a student
orthogonal to every teacher embedding. Where the aligned student scores worse than sqrt(B), the node term's best
reachable point is the orthogonal collapse, whatever the teacher's quality (docs/evidence.md, the first CPU study).
"""

import json
import math

from absl import app, flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from rmdnet_jax import fileio
from rmdnet_jax.core import relation
from rmdnet_jax.datasets import data
from rmdnet_jax.stages import simsiam

# (name, relation.teacher_layer, relation.center, relation.batch_center)
FORMS = (
    ('backbone', 'backbone', False, False),
    ('backbone+center', 'backbone', True, False),
    ('backbone+batch_center', 'backbone', False, True),
    ('projector', 'projector', False, False),
    ('projector+batch_center', 'projector', False, True),
)


def measure(config: ml_collections.ConfigDict, dataset: data.Dataset, teacher, batch: int) -> dict:
  """{form: {teacher_graph_mean, top_direction_share, aligned_node_loss, collapsed_node_loss}} on the first `batch`
  training images."""
  images = dataset.train_images[:batch]
  features = {}  # per teacher layer: each is one compiled program and one pass over the images
  out = {}
  for name, layer, center, batch_center in FORMS:
    if layer not in features:
      features[layer] = np.asarray(
          simsiam.encoder_features_fn(config.model, dataset, layer)(teacher, images), np.float32
      )
    t = features[layer]
    graphs = dict(center=center, batch_center=batch_center)
    diag = relation.relation_diagnostics(t, t, **graphs)
    centred = t - t.mean(axis=0, keepdims=True)
    singular = np.linalg.svd(centred, compute_uv=False) if len(t) > 1 else np.ones(1)
    out[name] = {
        'teacher_graph_mean': float(diag['teacher_graph_mean']),
        'top_direction_share': float(singular[0] ** 2 / max(np.sum(singular**2), 1e-30)),
        'aligned_node_loss': float(relation.node_matching_loss(t, t, **graphs)),
        'collapsed_node_loss': math.sqrt(len(images)),
    }
  return out


def format_table(results: dict) -> str:
  rows = [
      '| teacher features | mean off-diagonal cos(t_i, t_j) | variance on the top direction | node term, '
      'student = teacher | node term, orthogonal student (sqrt B) |',
      '|---|---|---|---|---|',
  ]
  for name, r in results.items():
    rows.append(
        f"| {name} | {r['teacher_graph_mean']:.3f} | {100 * r['top_direction_share']:.0f}% | "
        f"{r['aligned_node_loss']:.2f} | {r['collapsed_node_loss']:.2f} |"
    )
  return '\n'.join(rows)


FLAGS = flags.FLAGS


def _define_flags():
  # Defined only when this module is the program: the command-line modules (main, analysis) define flags of the
  # same names, and a process that imports them all (a test session) would refuse the second definition.
  config_flags.DEFINE_config_file('config', None, 'Config file of the run whose teacher is measured.', lock_config=True)
  flags.DEFINE_integer('batch', 128, 'Images in the measured batch (the RGRL batch size is the natural choice).')
  flags.DEFINE_string('out', '', 'Write the measurements as JSON (and the table as .md beside it).')
  flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = FLAGS.config
  dataset = data.load(config.data)
  teacher = simsiam.load_teacher(config, dataset, workdir='')
  results = measure(config, dataset, teacher, FLAGS.batch)
  table = format_table(results)
  print(table)
  if FLAGS.out and jax.process_index() == 0:
    fileio.write_text(FLAGS.out, json.dumps(results, indent=2))
    fileio.write_text(FLAGS.out.rsplit('.', 1)[0] + '.md', table + '\n')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
