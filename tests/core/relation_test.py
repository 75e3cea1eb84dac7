"""Tests of rmdnet_jax.core.relation against independent float64 numpy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.core import relation

RTOL = 1e-5
ATOL = 1e-6
B, D = 6, 5


# ----------------------------------------------------------------------------- numpy references (float64)


def np_cos(u, v):
  """Cosine similarity; 0 when either vector is zero."""
  nu, nv = np.linalg.norm(u), np.linalg.norm(v)
  if nu == 0.0 or nv == 0.0:
    return 0.0
  return float(np.dot(u, v) / (nu * nv))


def np_rows(h, center):
  h = np.asarray(h, np.float64)
  if center:
    h = np.stack([row - row.mean() for row in h])
    # Centring a constant row gives round-off, not an exact zero; a constant row is zero by definition.
    h[np.all(np.isclose(h, 0.0, atol=1e-15), axis=1)] = 0.0
  return h


def np_graph(h, center=False):
  h = np_rows(h, center)
  n = h.shape[0]
  a = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      a[i, j] = np_cos(h[i], h[j])
  return a


def np_cross(t, s, center=False):
  t, s = np_rows(t, center), np_rows(s, center)
  n = t.shape[0]
  m = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      m[i, j] = np_cos(t[i], s[j])
  return m


def np_softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def np_edge(t, s, kind='frobenius', center=False, k=None, temperature=0.5):
  a_t, a_s = np_graph(t, center), np_graph(s, center)
  n = a_t.shape[0]
  if kind == 'frobenius':
    return float(np.sqrt(np.sum((a_t - a_s) ** 2)))
  if kind == 'mse':
    return float(np.sum((a_t - a_s) ** 2) / (n * n))
  assert kind == 'kl'
  k = n - 1 if k is None else k
  total = 0.0
  for i in range(n):
    others = [j for j in range(n) if j != i]
    # Highest teacher similarity first; among equal similarities the lower index first.
    others.sort(key=lambda j: (-a_t[i, j], j))
    nbrs = others[:k]
    p = np_softmax(np.array([a_t[i, j] for j in nbrs]) / temperature)
    q = np_softmax(np.array([a_s[i, j] for j in nbrs]) / temperature)
    total += sum(p[m] * (np.log(p[m]) - np.log(q[m])) for m in range(k))
  return total / n


def np_node(t, s, kind='frobenius', center=False):
  if kind == 'frobenius':
    m = np_cross(t, s, center)
    return float(np.sqrt(np.sum((m - np.eye(m.shape[0])) ** 2)))
  assert kind == 'cosine'
  tc, sc = np_rows(t, center), np_rows(s, center)
  return float(np.mean([1.0 - np_cos(tc[i], sc[i]) for i in range(tc.shape[0])]))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def x64():
  """float64 inside one test only; the previous setting is restored afterwards."""
  with jax.enable_x64(True):
    yield
  assert jnp.zeros(()).dtype == jnp.float32, 'x64 leaked out of the test'


def feats(seed, b=B, d=D):
  return np.random.default_rng(seed).normal(size=(b, d))


def f32(x):
  return jnp.asarray(x, jnp.float32)


def jgrad(fn, argnums=0):
  """Jitted gradient: eager differentiation of the jitted losses dispatches op by op and is slow."""
  return jax.jit(jax.grad(fn, argnums=argnums))


def jvg(fn, argnums=0):
  return jax.jit(jax.value_and_grad(fn, argnums=argnums))


def assert_close(actual, desired):
  np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- graphs


def test_l2_normalize_unit_rows_and_zero_row():
  x = feats(0)
  x[2] = 0.0
  n = np.asarray(relation.l2_normalize(f32(x)))
  assert_close(np.linalg.norm(n[[0, 1, 3, 4, 5]], axis=1), np.ones(5))
  assert np.all(n[2] == 0.0)
  g = jgrad(lambda v: jnp.sum(relation.l2_normalize(v) ** 2))(f32(x))
  assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize('center', [False, True])
def test_relation_graph_matches_numpy(center):
  h = feats(1)
  a = np.asarray(relation.relation_graph(f32(h), center=center))
  assert a.shape == (B, B) and a.dtype == np.float32
  assert_close(a, np_graph(h, center))
  np.testing.assert_allclose(a, a.T, rtol=0, atol=1e-7)
  assert_close(np.diag(a), np.ones(B))


def test_relation_graph_center_is_pearson_correlation():
  h = feats(2)
  assert_close(relation.relation_graph(f32(h), center=True), np.corrcoef(h))


@pytest.mark.parametrize('center', [False, True])
def test_relation_graph_zero_vector(center):
  h = feats(3)
  h[4] = 0.0
  a = np.asarray(relation.relation_graph(f32(h), center=center))
  assert np.all(np.isfinite(a))
  assert np.all(a[4] == 0.0) and np.all(a[:, 4] == 0.0)
  assert_close(a, np_graph(h, center))


def test_relation_graph_center_constant_row_is_zero():
  h = feats(4)
  h[1] = 3.0  # Constant over features: centring makes it the zero vector.
  a = np.asarray(relation.relation_graph(f32(h), center=True))
  assert np.all(np.isfinite(a))
  np.testing.assert_allclose(a[1], 0.0, atol=1e-6)
  np.testing.assert_allclose(a[:, 1], 0.0, atol=1e-6)


def test_relation_graph_bf16_input_computed_in_float32():
  h = feats(5)
  h_bf16 = jnp.asarray(h, jnp.bfloat16)
  a = relation.relation_graph(h_bf16)
  assert a.dtype == jnp.float32
  # Reference on the bf16-rounded inputs: only the input rounding, no bf16 arithmetic, remains.
  assert_close(a, np_graph(np.asarray(h_bf16, np.float64)))
  loss = relation.edge_matching_loss(h_bf16, jnp.asarray(feats(6), jnp.bfloat16))
  assert loss.dtype == jnp.float32


@pytest.mark.parametrize('center', [False, True])
def test_cross_graph_matches_numpy(center):
  t, s = feats(7), feats(8)
  s[0] = 0.0
  n = relation.cross_graph(f32(t), f32(s), center=center)
  assert n.shape == (B, B)
  assert_close(n, np_cross(t, s, center))


# ----------------------------------------------------------------------------- edge matching


@pytest.mark.parametrize('kind,center', itertools.product(['frobenius', 'mse', 'kl'], [False, True]))
def test_edge_matching_matches_numpy(kind, center):
  t, s = feats(10), feats(11)
  loss = relation.edge_matching_loss(f32(t), f32(s), kind=kind, center=center)
  assert loss.shape == ()
  assert_close(loss, np_edge(t, s, kind, center))


@pytest.mark.parametrize('k', [1, 2, 3, B - 1])
def test_edge_kl_topk(k):
  t, s = feats(12), feats(13)
  assert_close(relation.edge_matching_loss(f32(t), f32(s), kind='kl', k=k), np_edge(t, s, 'kl', k=k))


def test_edge_kl_k_none_is_all_others():
  t, s = feats(14), feats(15)
  full = relation.edge_matching_loss(f32(t), f32(s), kind='kl', k=None)
  assert_close(full, relation.edge_matching_loss(f32(t), f32(s), kind='kl', k=B - 1))
  assert_close(full, np_edge(t, s, 'kl', k=B - 1))


def test_edge_kl_k1_is_zero():
  # One neighbour: both softmaxes are [1], whatever the student does.
  t, s = feats(16), feats(17)
  assert_close(relation.edge_matching_loss(f32(t), f32(s), kind='kl', k=1), 0.0)


@pytest.mark.parametrize('k', [1, 2, 3, None])
def test_edge_kl_duplicate_rows(k):
  # Rows 1 and 3 duplicated in both teacher and student: every node sees a tie between them in A^T,
  # and node 1's nearest neighbour is 3 (similarity 1).
  t, s = feats(18), feats(19)
  t[3], s[3] = t[1], s[1]
  for kind in ['frobenius', 'mse', 'kl']:
    loss = relation.edge_matching_loss(f32(t), f32(s), kind=kind, k=k)
    assert np.isfinite(float(loss))
    assert_close(loss, np_edge(t, s, kind, k=k))


@pytest.mark.parametrize('k', [2, None])
def test_edge_zero_feature_vector(k):
  # A zero teacher vector has an all-zero A^T row: its neighbours are pure ties, broken by lower index.
  t, s = feats(20), feats(21)
  t[0] = 0.0
  s[2] = 0.0
  for kind in ['frobenius', 'mse', 'kl']:
    loss = relation.edge_matching_loss(f32(t), f32(s), kind=kind, k=k)
    assert np.isfinite(float(loss))
    assert_close(loss, np_edge(t, s, kind, k=k))


def test_edge_kl_temperature():
  t, s = feats(22), feats(23)
  losses = {}
  for tau in [0.1, 0.5, 2.0, 100.0]:
    losses[tau] = float(relation.edge_matching_loss(f32(t), f32(s), kind='kl', k=3, temperature=tau))
    assert_close(losses[tau], np_edge(t, s, 'kl', k=3, temperature=tau))
  assert len(set(losses.values())) == 4
  # Flat softmaxes at high temperature: KL -> 0 (as 1/tau^2).
  assert losses[100.0] < 1e-3 * losses[0.5]


def test_edge_identical_features_zero_loss():
  t = feats(24)
  for kind in ['frobenius', 'mse', 'kl']:
    assert_close(relation.edge_matching_loss(f32(t), f32(t), kind=kind), 0.0)


# ----------------------------------------------------------------------------- node matching


@pytest.mark.parametrize('kind,center', itertools.product(['frobenius', 'cosine'], [False, True]))
def test_node_matching_matches_numpy(kind, center):
  t, s = feats(30), feats(31)
  loss = relation.node_matching_loss(f32(t), f32(s), kind=kind, center=center)
  assert loss.shape == ()
  assert_close(loss, np_node(t, s, kind, center))


@pytest.mark.parametrize('kind', ['frobenius', 'cosine'])
def test_node_matching_zero_vector(kind):
  t, s = feats(32), feats(33)
  t[1] = 0.0
  s[4] = 0.0
  loss = relation.node_matching_loss(f32(t), f32(s), kind=kind)
  assert_close(loss, np_node(t, s, kind))


def test_node_frobenius_identical_orthogonal_rows_is_zero():
  q, _ = np.linalg.qr(np.random.default_rng(34).normal(size=(8, 8)))
  t = 3.0 * q[:B]  # B orthogonal rows, not unit norm.
  assert_close(relation.node_matching_loss(f32(t), f32(t), kind='frobenius'), 0.0)
  assert_close(relation.node_matching_loss(f32(t), f32(t), kind='cosine'), 0.0)


def test_node_frobenius_penalises_matching_other_nodes():
  # Identical but non-orthogonal features: each student node also resembles other teacher nodes.
  t = feats(35)
  assert float(relation.node_matching_loss(f32(t), f32(t), kind='frobenius')) > 0.1
  assert_close(relation.node_matching_loss(f32(t), f32(t), kind='cosine'), 0.0)


# ----------------------------------------------------------------------------- gradients

GRAD_CASES = [('edge', kind, center) for kind in relation.EDGE_KINDS for center in (False, True)] + [
    ('node', kind, center) for kind in relation.NODE_KINDS for center in (False, True)
]


def jax_loss(term, kind, center, k=None):
  if term == 'edge':
    return lambda t, s: relation.edge_matching_loss(t, s, kind=kind, center=center, k=k)
  return lambda t, s: relation.node_matching_loss(t, s, kind=kind, center=center)


def np_loss(term, kind, center, k=None):
  if term == 'edge':
    return lambda t, s: np_edge(t, s, kind, center, k=k)
  return lambda t, s: np_node(t, s, kind, center)


@pytest.mark.parametrize('term,kind,center', GRAD_CASES)
def test_student_gradient_matches_finite_differences(x64, term, kind, center):
  t, s = feats(40), feats(41)
  k = 3 if kind == 'kl' else None
  g = np.asarray(jgrad(jax_loss(term, kind, center, k), argnums=1)(jnp.asarray(t), jnp.asarray(s)))
  assert g.dtype == np.float64
  f = np_loss(term, kind, center, k)
  h = 1e-6
  fd = np.zeros_like(s)
  for idx in np.ndindex(*s.shape):
    sp, sm = s.copy(), s.copy()
    sp[idx] += h
    sm[idx] -= h
    fd[idx] = (f(t, sp) - f(t, sm)) / (2 * h)
  np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('term,kind,center', GRAD_CASES)
def test_teacher_gets_zero_gradient(term, kind, center):
  t, s = f32(feats(42)), f32(feats(43))
  g = jgrad(jax_loss(term, kind, center), argnums=0)(t, s)
  assert np.all(np.asarray(g) == 0.0)


def test_total_loss_teacher_gets_zero_gradient():
  t, s = f32(feats(44)), f32(feats(45))
  g = jgrad(lambda t_, s_: relation.relation_distillation_loss(t_, s_)[0], argnums=0)(t, s)
  assert np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize('center', [False, True])
def test_frobenius_gradient_finite_when_student_equals_teacher(center):
  t = f32(feats(46))
  for fn in (
      lambda s: relation.edge_matching_loss(t, s, kind='frobenius', center=center),
      lambda s: relation.relation_distillation_loss(t, s, center=center)[0],
  ):
    loss, g = jvg(fn)(t)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(np.asarray(g)))
  loss, g = jvg(lambda s: relation.edge_matching_loss(t, s, center=center))(t)
  assert_close(loss, 0.0)
  # Not asserted to be 0: under jit the teacher and student graphs may differ by round-off, and near 0 the
  # gradient of the (unsquared) norm is a unit direction of that round-off. Exact zero: see the next test.
  # The smooth mse loss does have a vanishing gradient here.
  loss, g = jvg(lambda s: relation.edge_matching_loss(t, s, kind='mse', center=center))(t)
  assert_close(loss, 0.0)
  np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-5)


def test_node_frobenius_gradient_zero_at_exact_zero_loss():
  # One-hot rows: normalisation and the cross graph are exact, so N - I is exactly 0 (the sqrt's kink).
  t = f32(2.0 * np.eye(B, D + 3))
  loss, g = jvg(lambda s: relation.node_matching_loss(t, s, kind='frobenius'))(t)
  assert float(loss) == 0.0
  assert np.all(np.asarray(g) == 0.0)
  loss, g = jvg(lambda s: relation.edge_matching_loss(t, s, kind='frobenius'))(t)
  assert float(loss) == 0.0
  assert np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize('term,kind,center', GRAD_CASES)
def test_gradient_finite_with_zero_vector(term, kind, center):
  t, s = feats(47), feats(48)
  t[2] = 0.0
  s[2] = 0.0
  s[5] = 0.0
  loss, g = jvg(jax_loss(term, kind, center), argnums=1)(f32(t), f32(s))
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(np.asarray(g)))


def test_gradient_finite_zero_vector_student_equals_teacher():
  t = feats(49)
  t[0] = 0.0
  for term, kind in [('edge', 'frobenius'), ('node', 'frobenius')]:
    _, g = jvg(jax_loss(term, kind, False), argnums=1)(f32(t), f32(t))
    assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------- combined loss


@pytest.mark.parametrize('edge_kind,node_kind', itertools.product(relation.EDGE_KINDS, relation.NODE_KINDS))
def test_distillation_loss_is_weighted_sum(edge_kind, node_kind):
  t, s = f32(feats(50)), f32(feats(51))
  k = 2 if edge_kind == 'kl' else None
  total, parts = relation.relation_distillation_loss(
      t,
      s,
      node_weight=0.7,
      edge_weight=1.9,
      edge_kind=edge_kind,
      node_kind=node_kind,
      center=True,
      k=k,
      temperature=0.3,
  )
  node = relation.node_matching_loss(t, s, kind=node_kind, center=True)
  edge = relation.edge_matching_loss(t, s, kind=edge_kind, center=True, k=k, temperature=0.3)
  assert_close(parts['node'], float(node))
  assert_close(parts['edge'], float(edge))
  assert_close(total, 0.7 * float(node) + 1.9 * float(edge))
  assert_close(parts['node'], np_node(np.asarray(t), np.asarray(s), node_kind, True))
  assert_close(parts['edge'], np_edge(np.asarray(t), np.asarray(s), edge_kind, True, k=k, temperature=0.3))


def test_distillation_loss_defaults():
  t, s = feats(52), feats(53)
  total, parts = relation.relation_distillation_loss(f32(t), f32(s))
  assert_close(parts['node'], np_node(t, s, 'frobenius'))
  assert_close(parts['edge'], np_edge(t, s, 'frobenius'))
  assert_close(total, np_node(t, s, 'frobenius') + 0.3 * np_edge(t, s, 'frobenius'))


def test_distillation_loss_zero_weights_turn_terms_off():
  t, s = f32(feats(54)), f32(feats(55))
  node = float(relation.node_matching_loss(t, s))
  edge = float(relation.edge_matching_loss(t, s))
  total, _ = relation.relation_distillation_loss(t, s, node_weight=0.0, edge_weight=1.0)
  assert_close(total, edge)
  total, _ = relation.relation_distillation_loss(t, s, node_weight=1.0, edge_weight=0.0)
  assert_close(total, node)
  total, _ = relation.relation_distillation_loss(t, s, node_weight=0.0, edge_weight=0.0)
  assert float(total) == 0.0
  g = jgrad(lambda s_: relation.relation_distillation_loss(t, s_, node_weight=0.0, edge_weight=0.0)[0])(s)
  assert np.all(np.asarray(g) == 0.0)
  # Edge-only: gradient equals the edge loss's gradient.
  g_edge_only = jgrad(lambda s_: relation.relation_distillation_loss(t, s_, node_weight=0.0)[0])(s)
  g_edge = jgrad(lambda s_: 0.3 * relation.edge_matching_loss(t, s_))(s)
  np.testing.assert_allclose(np.asarray(g_edge_only), np.asarray(g_edge), rtol=1e-6, atol=1e-7)


def test_loss_inside_outer_jit_on_global_batch():
  # The train step calls the loss on all-gathered features inside its own jit.
  t, s = f32(feats(56, b=16, d=8)), f32(feats(57, b=16, d=8))
  step = jax.jit(lambda t_, s_: relation.relation_distillation_loss(t_, s_, edge_kind='kl', k=4)[0])
  assert_close(
      step(t, s), np_node(np.asarray(t), np.asarray(s)) + 0.3 * np_edge(np.asarray(t), np.asarray(s), 'kl', k=4)
  )


# ----------------------------------------------------------------------------- validation


def test_unknown_edge_kind():
  t, s = f32(feats(60)), f32(feats(61))
  with pytest.raises(ValueError, match=r'relation\.edge_kind.*frobenius, kl, mse'):
    relation.edge_matching_loss(t, s, kind='l1')
  with pytest.raises(ValueError, match=r'relation\.edge_kind'):
    relation.relation_distillation_loss(t, s, edge_kind='cosine')


def test_unknown_node_kind():
  t, s = f32(feats(62)), f32(feats(63))
  with pytest.raises(ValueError, match=r'relation\.node_kind.*frobenius, cosine'):
    relation.node_matching_loss(t, s, kind='kl')
  with pytest.raises(ValueError, match=r'relation\.node_kind'):
    relation.relation_distillation_loss(t, s, node_kind='mse')


@pytest.mark.parametrize('k', [0, -1, B, B + 3])
def test_kl_topk_out_of_range(k):
  t, s = f32(feats(64)), f32(feats(65))
  with pytest.raises(ValueError, match=r'relation\.edge_topk'):
    relation.edge_matching_loss(t, s, kind='kl', k=k)
  with pytest.raises(ValueError, match=r'relation\.edge_topk'):
    relation.relation_distillation_loss(t, s, edge_kind='kl', k=k)


def test_kl_needs_two_nodes():
  t, s = f32(feats(66, b=1)), f32(feats(67, b=1))
  with pytest.raises(ValueError, match=r'relation\.edge_topk'):
    relation.edge_matching_loss(t, s, kind='kl')


def test_dimension_mismatch():
  t, s = f32(feats(68, d=7)), f32(feats(69, d=5))
  with pytest.raises(ValueError, match="projection head must map the student to the teacher's dimension"):
    relation.edge_matching_loss(t, s)
  with pytest.raises(ValueError, match='projection head'):
    relation.node_matching_loss(t, s)
  with pytest.raises(ValueError, match='projection head'):
    relation.cross_graph(t, s)
  with pytest.raises(ValueError, match='projection head'):
    relation.relation_distillation_loss(t, s)


def test_batch_mismatch():
  with pytest.raises(ValueError, match='batch'):
    relation.edge_matching_loss(f32(feats(70, b=4)), f32(feats(71, b=5)))


# ----------------------------------------------------------------------------- batch-invariant scale, batch
# centring and the diagnostics (README, "Evidence")


def np_batch_centered(h):
  h = np.asarray(h, np.float64)
  return h - h.mean(axis=0, keepdims=True)


@pytest.mark.parametrize('center', [False, True])
def test_per_node_scale_matches_numpy(center):
  t, s = feats(30), feats(31)
  b = t.shape[0]
  node = relation.node_matching_loss(f32(t), f32(s), center=center, normalize='per_node')
  edge = relation.edge_matching_loss(f32(t), f32(s), center=center, normalize='per_node')
  assert_close(node, np_node(t, s, center=center) / b)
  assert_close(edge, np_edge(t, s, center=center) / b)


def test_per_node_edge_term_is_the_same_on_a_batch_duplicated_to_2b():
  t, s = feats(32), feats(33)
  t2, s2 = np.concatenate([t, t]), np.concatenate([s, s])
  once = relation.edge_matching_loss(f32(t), f32(s), normalize='per_node')
  twice = relation.edge_matching_loss(f32(t2), f32(s2), normalize='per_node')
  np.testing.assert_allclose(float(twice), float(once), rtol=1e-5)
  # The unnormalised (EGA) term doubles: the scale the per_node option removes.
  raw_once = relation.edge_matching_loss(f32(t), f32(s))
  raw_twice = relation.edge_matching_loss(f32(t2), f32(s2))
  np.testing.assert_allclose(float(raw_twice), 2 * float(raw_once), rtol=1e-5)


@pytest.mark.parametrize('kind', ['mse', 'kl'])
def test_per_node_scale_leaves_mean_kinds_alone(kind):
  t, s = feats(34), feats(35)
  assert_close(relation.edge_matching_loss(f32(t), f32(s), kind=kind, normalize='per_node'), np_edge(t, s, kind=kind))


def test_unknown_normalize():
  with pytest.raises(ValueError, match='relation.normalize'):
    relation.edge_matching_loss(f32(feats(0)), f32(feats(1)), normalize='per_batch')


@pytest.mark.parametrize('kind', ['frobenius', 'cosine'])
def test_batch_center_matches_numpy(kind):
  t, s = feats(36) + 3.0, feats(37) + 1.0  # a shared offset, as non-negative pooled features have
  tc, sc = np_batch_centered(t), np_batch_centered(s)
  assert_close(relation.relation_graph(f32(t), batch_center=True), np_graph(tc))
  assert_close(relation.cross_graph(f32(t), f32(s), batch_center=True), np_cross(tc, sc))
  assert_close(relation.node_matching_loss(f32(t), f32(s), kind=kind, batch_center=True), np_node(tc, sc, kind))
  assert_close(relation.edge_matching_loss(f32(t), f32(s), batch_center=True), np_edge(tc, sc))


def test_diagnostics_match_numpy():
  t, s = feats(38), feats(39)
  n, a_t, a_s = np_cross(t, s), np_graph(t), np_graph(s)
  off = ~np.eye(B, dtype=bool)
  got = relation.relation_diagnostics(f32(t), f32(s))
  assert_close(got['node_diag_cos'], np.mean(np.diag(n)))
  assert_close(got['node_offdiag_rms'], np.sqrt(np.mean(n[off] ** 2)))
  assert_close(got['teacher_graph_mean'], np.mean(a_t[off]))
  assert_close(got['student_graph_mean'], np.mean(a_s[off]))
  assert_close(got['edge_offdiag_rms'], np.sqrt(np.mean((a_t - a_s)[off] ** 2)))


def test_node_term_prefers_orthogonal_collapse_for_non_negative_teacher_features():
  """The geometry behind the node-matching collapse: with features that share a direction (as ReLU outputs do),
  a student orthogonal to every teacher node scores better than one aligned with its own teacher node; batch
  centring reverses that."""
  rng = np.random.default_rng(40)
  b, d = 64, 128
  t = np.abs(rng.normal(size=(b, d)))  # non-negative, like pooled features after a ReLU
  aligned = t.copy()
  # Orthogonal to every teacher node: the component of random vectors outside the teachers' span.
  q, _ = np.linalg.qr(t.T)
  r = rng.normal(size=(b, d))
  collapsed = r - (r @ q) @ q.T
  assert float(relation.node_matching_loss(f32(t), f32(collapsed))) == pytest.approx(np.sqrt(b), rel=1e-3)
  assert float(relation.node_matching_loss(f32(t), f32(aligned))) > 5 * np.sqrt(b)
  diag = relation.relation_diagnostics(f32(t), f32(collapsed))
  assert abs(float(diag['node_diag_cos'])) < 1e-3 and float(diag['teacher_graph_mean']) > 0.5
  # Centred over the batch, the aligned student's cross graph has small off-diagonal entries.
  centred = relation.node_matching_loss(f32(t), f32(aligned), batch_center=True)
  assert float(centred) < float(relation.node_matching_loss(f32(t), f32(aligned)))
