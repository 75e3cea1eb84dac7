"""Relation-graph distillation losses of RMDNet's RGRL stage (node and edge matching).

The frozen SimSiam teacher and the student (feature extractor + projection head) embed the same batch; each
feature set defines a relation graph of pairwise cosine similarities. The student is regularised to reproduce
the teacher's graph (edge matching) and to place each of its embeddings on the teacher's embedding of the same
image and on no other (node matching).

Reconstruction: the paper's full text is unavailable. The default form follows EGA (Ma, Chen & Akata, BMVC
2022, "Embedding Graph Alignment"), which a co-author's code uses with node weight 1 and edge weight 0.3:
Frobenius norms of graph differences on cosine-similarity graphs. The other plausible forms (KL over a
teacher k-NN neighbourhood, MSE of graphs, per-sample cosine node loss) are options; see
``paper/rmdnet.md``, "Reconstruction", items 3-6.

All functions are pure functions of one device's ``[B, D]`` arrays. The distillation train step gathers the
features of all devices (``lax.all_gather``) first, so B is the *global* batch and the graphs relate every
pair of images in it, not only pairs on the same device. The multiplier K of the objective is applied by the
train step, not here.
"""

import functools

import jax
import jax.numpy as jnp

EDGE_KINDS = ('frobenius', 'kl', 'mse')
NODE_KINDS = ('frobenius', 'cosine')
# Scale of the Frobenius terms. "none": EGA's unnormalised norms, which grow like B for a B x B graph of O(1)
# entries, so one K means a weaker regulariser at batch 128 than at batch 1,024. "per_node": each Frobenius norm
# divided by B, i.e. the root mean square of the B^2 entries' differences, the same for any batch size.
NORMALIZE = ('none', 'per_node')


def _as_compute_dtype(x):
  """Casts to at least float32 (bf16/f16 -> f32; f64 stays f64).

  The B x B graphs are sums of D products and the Frobenius norms sum B^2 squared differences of numbers
  near 1; in bf16 (8 mantissa bits) both lose most of the signal, so the losses are always computed in at
  least float32. float64 is kept so that finite-difference checks under x64 are meaningful.
  """
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_features(features, name):
  if features.ndim != 2:
    raise ValueError(f'{name} must be a [B, D] array, got shape {features.shape}.')


def _check_pair(teacher_features, student_features):
  _check_features(teacher_features, 'teacher_features')
  _check_features(student_features, 'student_features')
  if teacher_features.shape[0] != student_features.shape[0]:
    raise ValueError(
        'Teacher and student features must describe the same batch, got batch sizes '
        f'{teacher_features.shape[0]} and {student_features.shape[0]}.'
    )
  if teacher_features.shape[1] != student_features.shape[1]:
    raise ValueError(
        f"Student feature dimension {student_features.shape[1]} differs from the teacher's "
        f"{teacher_features.shape[1]}: the projection head must map the student to the teacher's dimension."
    )


def _check_kind(kind, valid, key):
  if kind not in valid:
    raise ValueError(f"Unknown {key} {kind!r}; set the config key {key} to one of: {', '.join(valid)}.")


def _safe_sqrt(x):
  """sqrt with gradient 0 (not inf/NaN) at x == 0.

  d sqrt(x)/dx = 1 / (2 sqrt(x)) is infinite at 0, and 0 * inf = NaN would then poison the whole update
  when the student matches the teacher exactly. The inner ``where`` keeps the untaken branch finite too,
  since ``where`` alone still differentiates both branches.
  """
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _frobenius_norm(m):
  """||m||_F with a finite gradient at m == 0.

  The unsquared norm (EGA's loss) is a cone: its gradient m / ||m||_F has unit norm however small m is, so
  when teacher and student graphs agree up to round-off the gradient points along the round-off. That is
  the loss's nature, not a numerical failure; ``mse`` is the smooth alternative.
  """
  return _safe_sqrt(jnp.sum(jnp.square(m)))


@functools.partial(jax.jit, static_argnames=('eps',))
def l2_normalize(x, eps=1e-8):
  """Scales each row to unit L2 norm; a zero row stays zero.

  ``x * rsqrt(max(|x|^2, eps^2))``: clamping the squared norm (rather than adding eps) leaves non-zero rows
  exactly unit-norm, and a zero row gives 0 with a finite gradient instead of 0/0 = NaN.

  Args:
    x: [B, D] features (or any [..., D] array; normalised over the last axis).
    eps: norm floor below which a row is treated as (near) zero.

  Returns:
    [B, D] array of the input's dtype promoted to at least float32. The gradient at an exactly zero row is
    finite but scaled by 1/eps (the map is x / eps there); real features are never exactly zero.
  """
  x = _as_compute_dtype(x)
  sq_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


def _prepare(features, center, batch_center=False):
  """Optionally centres the features, then normalises each row: rows of the graph's Gram matrix."""
  features = _as_compute_dtype(features)
  if batch_center:
    # Subtracting each feature's mean over the batch removes the direction every embedding shares. Pooled
    # features after a ReLU are non-negative, so without this any two images have a cosine near 0.7 and the
    # node term's N_ij -> 0 (j != i) can only be met by turning the student away from its own teacher node too
    # (docs/evidence.md, the first CPU study: the node-matching collapse).
    features = features - jnp.mean(features, axis=0, keepdims=True)
  if center:
    # Pearson correlation = cosine of the mean-centred vectors (EGA's graph); a constant row, e.g. a zero
    # vector, becomes the zero vector and thus gets a zero row and column.
    features = features - jnp.mean(features, axis=-1, keepdims=True)
  return l2_normalize(features)


@functools.partial(jax.jit, static_argnames=('center', 'batch_center'))
def relation_graph(features, *, center=False, batch_center=False):
  """Cosine-similarity relation graph A_ij = cos(h_i, h_j).

  Args:
    features: [B, D] features of one batch.
    center: subtract each row's mean over its D features first, so that A is the Pearson-correlation graph
    (as in EGA).
    batch_center: subtract each feature's mean over the B rows first (before ``center``).

  Returns:
    [B, B] symmetric graph, float32 (float64 for float64 inputs); the diagonal is 1 for non-zero rows, and
    the row and column of a zero (or, with ``center``, constant) vector are 0, diagonal entry included.
  """
  _check_features(features, 'features')
  n = _prepare(features, center, batch_center)
  # HIGHEST precision: on TPU/GPU the default matmul precision rounds the inputs to bf16/tf32, which would
  # make graph entries (and their teacher-student differences) wrong in the third decimal.
  return jnp.matmul(n, n.T, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=('center', 'batch_center'))
def cross_graph(teacher_features, student_features, *, center=False, batch_center=False):
  """Teacher-student cross graph N_ij = cos(t_i, s_j).

  No stop-gradient here (a plain graph builder); the losses stop the teacher's gradient.

  Args:
    teacher_features: [B, D] teacher features.
    student_features: [B, D] student features (after the projection head).
    center: centre each row over its features first (Pearson correlation).
    batch_center: centre each feature set over the batch first (each set by its own mean).

  Returns:
    [B, B] graph (not symmetric in general); row i is teacher node i, column j student node j.
  """
  _check_pair(teacher_features, student_features)
  t = _prepare(teacher_features, center, batch_center)
  s = _prepare(student_features, center, batch_center)
  return jnp.matmul(t, s.T, precision=jax.lax.Precision.HIGHEST)


def _frobenius_scale(b, normalize):
  _check_kind(normalize, NORMALIZE, 'relation.normalize')
  return 1.0 if normalize == 'none' else 1.0 / b


@functools.partial(jax.jit, static_argnames=('kind', 'center', 'batch_center', 'k', 'normalize'))
def edge_matching_loss(
    teacher_features,
    student_features,
    *,
    kind='frobenius',
    center=False,
    batch_center=False,
    k=None,
    temperature=0.5,
    normalize='none',
):
  """Edge matching: the student's relation graph must reproduce the teacher's.

  Kinds (A^T, A^S = ``relation_graph`` of teacher and student):
    * ``frobenius`` (default): ||A^T - A^S||_F (``normalize="per_node"``: ||A^T - A^S||_F / B).
    * ``mse``: mean over the B*B entries of (A^T - A^S)^2.
    * ``kl``: for each node i its k nearest neighbours N_i by teacher similarity (diagonal excluded),
    p_i = softmax(A^T[i, N_i] / tau), q_i = softmax(A^S[i, N_i] / tau); loss = mean_i KL(p_i || q_i).

  Args:
    teacher_features: [B, D] teacher features; receive no gradient.
    student_features: [B, D] student features, same D as the teacher.
    kind: one of ``EDGE_KINDS`` (config ``relation.edge_kind``).
    center: Pearson-correlation graphs instead of cosine graphs.
    batch_center: centre each feature set over the batch before the graphs.
    k: neighbourhood size for ``kl`` in [1, B-1]; None = all B-1 other nodes. Ignored by the other kinds.
    temperature: softmax temperature tau of ``kl`` (> 0); ignored by the other kinds.
    normalize: one of ``NORMALIZE``; scales the ``frobenius`` kind only (the others are means already).

  Returns:
    Scalar loss, float32 (float64 for float64 inputs).

  Raises:
    ValueError: unknown kind, k outside [1, B-1], or mismatched shapes.
  """
  _check_kind(kind, EDGE_KINDS, 'relation.edge_kind')
  _check_pair(teacher_features, student_features)
  # The teacher is the frozen relation model from RM: it is the target the student is pulled towards, so no
  # gradient may flow into it (as the stop-gradient on the target branch in byol/SimSiam).
  teacher_features = jax.lax.stop_gradient(teacher_features)
  a_t = relation_graph(teacher_features, center=center, batch_center=batch_center)
  a_s = relation_graph(student_features, center=center, batch_center=batch_center)
  b = a_t.shape[0]
  if kind == 'frobenius':
    return _frobenius_scale(b, normalize) * _frobenius_norm(a_t - a_s)
  if kind == 'mse':
    return jnp.mean(jnp.square(a_t - a_s))

  if b < 2:
    raise ValueError(
        f'The kl edge loss needs a global batch of at least 2 so that relation.edge_topk can lie in '
        f'[1, B-1], got B = {b}.'
    )
  num_neighbours = b - 1 if k is None else k
  if not 1 <= num_neighbours <= b - 1:
    raise ValueError(
        f'relation.edge_topk = {k} must lie in [1, B-1] = [1, {b - 1}] for the global batch B = {b} '
        '(the kl edge loss needs at least one neighbour per node besides itself).'
    )
  # A node is not its own neighbour: its self-similarity is 1 for every sample and carries no relation.
  masked = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, a_t)
  # Neighbours are chosen by the teacher only, so the selection is a constant w.r.t. the student and the
  # loss is smooth in the student features. Ties go to the lower index (lax.top_k).
  _, idx = jax.lax.top_k(masked, num_neighbours)
  logits_t = jnp.take_along_axis(a_t, idx, axis=1) / temperature
  logits_s = jnp.take_along_axis(a_s, idx, axis=1) / temperature
  log_p = jax.nn.log_softmax(logits_t, axis=-1)
  log_q = jax.nn.log_softmax(logits_s, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return jnp.mean(kl)


@functools.partial(jax.jit, static_argnames=('kind', 'center', 'batch_center', 'normalize'))
def node_matching_loss(
    teacher_features, student_features, *, kind='frobenius', center=False, batch_center=False, normalize='none'
):
  """Node matching: each student node must match its own teacher node.

  Kinds:
    * ``frobenius`` (default): ||N - I||_F with N = ``cross_graph(t, s)``: the student node i must align
    with teacher node i (N_ii -> 1) and be orthogonal to every other teacher node (N_ij -> 0, j != i).
    ``normalize="per_node"`` divides it by B.
    * ``cosine``: mean_i (1 - cos(t_i, s_i)), the diagonal of N only.

  Args:
    teacher_features: [B, D] teacher features; receive no gradient.
    student_features: [B, D] student features, same D as the teacher.
    kind: one of ``NODE_KINDS`` (config ``relation.node_kind``).
    center: centre each row over its features first (Pearson correlation).
    batch_center: centre each feature set over the batch first.
    normalize: one of ``NORMALIZE``; scales the ``frobenius`` kind only.

  Returns:
    Scalar loss, float32 (float64 for float64 inputs).

  Raises:
    ValueError: unknown kind or mismatched shapes.
  """
  _check_kind(kind, NODE_KINDS, 'relation.node_kind')
  _check_pair(teacher_features, student_features)
  # Frozen teacher: it is the target, never updated by the distillation loss (as byol's target branch).
  teacher_features = jax.lax.stop_gradient(teacher_features)
  if kind == 'frobenius':
    n = cross_graph(teacher_features, student_features, center=center, batch_center=batch_center)
    b = n.shape[0]
    return _frobenius_scale(b, normalize) * _frobenius_norm(n - jnp.eye(b, dtype=n.dtype))
  # Row-wise dot product instead of the B x B graph's diagonal: O(B D) rather than O(B^2 D).
  t = _prepare(teacher_features, center, batch_center)
  s = _prepare(student_features, center, batch_center)
  return jnp.mean(1.0 - jnp.sum(t * s, axis=-1))


@functools.partial(jax.jit, static_argnames=('edge_kind', 'node_kind', 'center', 'batch_center', 'k', 'normalize'))
def relation_distillation_loss(
    teacher_features,
    student_features,
    *,
    node_weight=1.0,
    edge_weight=0.3,
    edge_kind='frobenius',
    node_kind='frobenius',
    center=False,
    batch_center=False,
    k=None,
    temperature=0.5,
    normalize='none',
):
  """RGRL relation regulariser: node_weight * L_node + edge_weight * L_edge.

  Reconstruction: defaults are EGA's (node weight 1, edge weight 0.3, Frobenius node and edge losses). The
  hyperparameter K of the objective L = L_method + K * total is applied by the train step. The weights are
  traced (not static), so weight schedules or sweeps do not recompile; both terms are always computed so
  that they can be logged even when their weight is 0.

  Args:
    teacher_features: [B, D] teacher features of the global batch; receive no gradient.
    student_features: [B, D] projected student features of the same images in the same order.
    node_weight: weight of the node term (0 turns it off).
    edge_weight: weight of the edge term (0 turns it off).
    edge_kind: see ``edge_matching_loss``; config ``relation.edge_kind``.
    node_kind: see ``node_matching_loss``; config ``relation.node_kind``.
    center: Pearson-correlation graphs for both terms.
    batch_center: centre each feature set over the batch for both terms.
    k: neighbourhood size of the ``kl`` edge loss (config ``relation.edge_topk``).
    temperature: softmax temperature of the ``kl`` edge loss.
    normalize: scale of the Frobenius terms, one of ``NORMALIZE`` (config ``relation.normalize``).

  Returns:
    (total, {"node": L_node, "edge": L_edge}), all scalars.

  Raises:
    ValueError: unknown kinds, invalid k, or mismatched shapes.
  """
  graphs = dict(center=center, batch_center=batch_center, normalize=normalize)
  node = node_matching_loss(teacher_features, student_features, kind=node_kind, **graphs)
  edge = edge_matching_loss(teacher_features, student_features, kind=edge_kind, k=k, temperature=temperature, **graphs)
  total = node_weight * node + edge_weight * edge
  return total, {'node': node, 'edge': edge}


@functools.partial(jax.jit, static_argnames=('center', 'batch_center'))
def relation_diagnostics(teacher_features, student_features, *, center=False, batch_center=False):
  """What the relation terms are doing, on the graphs the losses see (logged, never differentiated).

  A node term that is met by alignment has ``node_diag_cos`` near 1; one that is met by turning every student
  embedding away from every teacher embedding (its own included) has ``node_diag_cos`` and
  ``node_offdiag_rms`` both near 0, and L_node near sqrt(B).

  Returns:
    {"node_diag_cos": mean_i N_ii, "node_offdiag_rms": sqrt(mean_{i != j} N_ij^2),
     "teacher_graph_mean": mean_{i != j} A^T_ij, "student_graph_mean": mean_{i != j} A^S_ij,
     "edge_offdiag_rms": sqrt(mean_{i != j} (A^T_ij - A^S_ij)^2),
     "graph_corr": the Pearson correlation of A^T_ij and A^S_ij over i != j (graph agreement up to offset and
     scale: 1 = the student orders its pairs as the teacher does)}, scalars.
  """
  graphs = dict(center=center, batch_center=batch_center)
  t = jax.lax.stop_gradient(teacher_features)
  s = jax.lax.stop_gradient(student_features)
  n = cross_graph(t, s, **graphs)
  a_t = relation_graph(t, **graphs)
  a_s = relation_graph(s, **graphs)
  b = n.shape[0]
  off = ~jnp.eye(b, dtype=bool)
  num_off = max(b * (b - 1), 1)

  def off_mean(m):
    return jnp.sum(jnp.where(off, m, 0.0)) / num_off

  return {
      'node_diag_cos': jnp.mean(jnp.diagonal(n)),
      'node_offdiag_rms': jnp.sqrt(off_mean(jnp.square(n))),
      'teacher_graph_mean': off_mean(a_t),
      'student_graph_mean': off_mean(a_s),
      'edge_offdiag_rms': jnp.sqrt(off_mean(jnp.square(a_t - a_s))),
      'graph_corr': _offdiag_correlation(a_t, a_s, off),
  }


def _offdiag_correlation(a, b, off):
  n = jnp.maximum(jnp.sum(off), 1)
  da = jnp.where(off, a - jnp.sum(jnp.where(off, a, 0.0)) / n, 0.0)
  db = jnp.where(off, b - jnp.sum(jnp.where(off, b, 0.0)) / n, 0.0)
  return jnp.sum(da * db) / jnp.maximum(jnp.sqrt(jnp.sum(da * da) * jnp.sum(db * db)), 1e-12)
