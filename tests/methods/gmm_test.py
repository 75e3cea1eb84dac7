"""rmdnet_jax/methods/gmm.py: the two-component GMM splits a known mixture, agrees with scikit-learn, and refuses
non-finite losses."""

import numpy as np
import pytest

from rmdnet_jax.methods import gmm


def test_gmm_splits_a_known_mixture_and_agrees_with_sklearn():
  from sklearn import mixture

  rng = np.random.default_rng(0)
  clean = rng.normal(0.5, 0.2, 800).clip(0)
  noisy = rng.normal(4.0, 0.5, 200)
  losses = np.concatenate([clean, noisy])
  p = gmm.clean_probability(losses)
  assert np.all(p[:800] > 0.99) and np.all(p[800:] < 0.01)
  normalised = (losses - losses.min()) / (losses.max() - losses.min())
  reference = mixture.GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
  reference.fit(normalised[:, None])
  want = reference.predict_proba(normalised[:, None])[:, reference.means_.argmin()]
  np.testing.assert_allclose(p, want, atol=1e-3)


def test_gmm_refuses_non_finite_losses():
  with pytest.raises(ValueError, match='non-finite'):
    gmm.fit(np.array([0.1, np.nan, 0.3]))
