"""A two-component 1-D Gaussian mixture fitted by EM in numpy: DivideMix's clean/noisy split of per-example losses.

Follows scikit-learn's `GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)` that DivideMix
calls (initial responsibilities from k-means, EM stopped when the mean log-likelihood changes by less than `tol`),
with a deterministic k-means started at the minimum and maximum instead of sklearn's random restarts, so the split
is a pure function of the losses.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture1D:
  weights: np.ndarray  # [2]
  means: np.ndarray  # [2]
  variances: np.ndarray  # [2]
  iterations: int
  converged: bool

  def log_joint(self, x: np.ndarray) -> np.ndarray:
    """log(weight_k * N(x | mean_k, var_k)), [N, 2]."""
    x = np.asarray(x, np.float64)[:, None]
    return (
        np.log(self.weights) - 0.5 * np.log(2 * np.pi * self.variances) - 0.5 * (x - self.means) ** 2 / self.variances
    )

  def posterior(self, x: np.ndarray) -> np.ndarray:
    """p(component k | x), [N, 2]."""
    log_joint = self.log_joint(x)
    log_joint -= log_joint.max(axis=1, keepdims=True)
    p = np.exp(log_joint)
    return p / p.sum(axis=1, keepdims=True)


def _two_means(x: np.ndarray, max_iter: int = 100) -> np.ndarray:
  """Hard assignment [N] of 1-D k-means with k=2 started at (min, max)."""
  centres = np.array([x.min(), x.max()])
  assign = np.zeros(len(x), np.int64)
  for _ in range(max_iter):
    new_assign = (np.abs(x - centres[1]) < np.abs(x - centres[0])).astype(np.int64)
    if _ > 0 and np.array_equal(new_assign, assign):
      break
    assign = new_assign
    for k in range(2):
      if np.any(assign == k):
        centres[k] = x[assign == k].mean()
  return assign


def _m_step(x: np.ndarray, resp: np.ndarray, reg_covar: float):
  counts = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # as sklearn: no empty component
  means = (resp * x[:, None]).sum(axis=0) / counts
  variances = (resp * (x[:, None] - means) ** 2).sum(axis=0) / counts + reg_covar
  return counts / len(x), means, variances


def fit(x: np.ndarray, *, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4) -> GaussianMixture1D:
  """EM for a two-component mixture of the values `x` [N].

  Raises:
    ValueError: fewer than two values, or non-finite values.
  """
  x = np.asarray(x, np.float64).reshape(-1)
  if len(x) < 2 or not np.all(np.isfinite(x)):
    raise ValueError(
        f'The GMM needs at least two finite values, got {len(x)} with '
        f'{int(np.sum(~np.isfinite(x)))} non-finite; check the per-example losses.'
    )
  resp = np.eye(2)[_two_means(x)]
  weights, means, variances = _m_step(x, resp, reg_covar)
  lower_bound, converged, iteration = -np.inf, False, 0
  for iteration in range(1, max_iter + 1):
    model = GaussianMixture1D(weights, means, variances, iteration, False)
    log_joint = model.log_joint(x)
    log_norm = np.logaddexp(log_joint[:, 0], log_joint[:, 1])
    resp = np.exp(log_joint - log_norm[:, None])
    weights, means, variances = _m_step(x, resp, reg_covar)
    previous, lower_bound = lower_bound, float(np.mean(log_norm))
    if abs(lower_bound - previous) < tol:
      converged = True
      break
  return GaussianMixture1D(weights, means, variances, iteration, converged)


def clean_probability(losses: np.ndarray, **fit_kwargs) -> np.ndarray:
  """DivideMix's co-divide: p(clean) of every example = posterior of the lower-mean component of a GMM fitted to
  the min-max normalised losses [N]."""
  losses = np.asarray(losses, np.float64)
  span = losses.max() - losses.min()
  normalised = (losses - losses.min()) / (span if span > 0 else 1.0)
  model = fit(normalised, **fit_kwargs)
  return model.posterior(normalised)[:, int(np.argmin(model.means))]
