"""The console commands of the installed package (pyproject.toml [project.scripts]); each is the `python -m` form:

rmdnet-train    = python -m rmdnet_jax.main                     (--config=configs/NAME.py finds the packaged configs too)
rmdnet-prepare  = python -m rmdnet_jax.datasets.prepare_data    (needs TensorFlow: pip install "rmdnet_jax[prepare]")
rmdnet-results  = python -m rmdnet_jax.report.results
rmdnet-analyse  = python -m rmdnet_jax.report.analysis
"""

import sys


def train():
  from rmdnet_jax import main  # noqa: PLC0415  (each command imports only what it runs)

  main.cli()


def prepare():
  from absl import app  # noqa: PLC0415
  from rmdnet_jax.datasets import prepare_data  # noqa: PLC0415

  app.run(prepare_data.main)


def results():
  from rmdnet_jax.report import results as results_lib  # noqa: PLC0415

  sys.exit(results_lib.main())


def analyse():
  from absl import app  # noqa: PLC0415
  from rmdnet_jax.report import analysis  # noqa: PLC0415

  app.run(analysis.main)
