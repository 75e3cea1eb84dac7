"""launch/colab_tpu.ipynb, executed headlessly in TINY mode: every cell runs, and the last code cell prints the table.

TINY mode (RMDNET_NOTEBOOK_TINY=1) trains the tests/helpers.py-sized model on synthetic images and never runs pip
or downloads anything. The kernel gets its own environment: one CPU device, the fast-compile XLA flags of
conftest.py, and conftest's persistent compilation cache, so that a second run skips most of the compiling.
"""

import os
import pathlib

import pytest

from tests import xla_flags

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'launch' / 'colab_tpu.ipynb'


def kernel_env(workdir):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # conftest's 8 fake devices: not needed here
  env.update(
      {
          'RMDNET_NOTEBOOK_TINY': '1',
          'RMDNET_NOTEBOOK_WORKDIR': str(workdir),
          'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': xla_flags.CHILD_RUNS,
          'TF_CPP_MIN_LOG_LEVEL': '3',
      }
  )
  return env


def outputs_text(cell):
  return ''.join(out.get('text', '') for out in cell.get('outputs', []) if out.get('output_type') == 'stream')


def test_notebook_is_valid_nbformat_4():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4 and nb.cells[0].cell_type == 'markdown' and nb.cells[-1].cell_type == 'markdown'
  assert all(not cell.get('outputs') for cell in nb.cells if cell.cell_type == 'code')  # stored without outputs
  for i, cell in enumerate(nb.cells):  # every code cell is Python (shell `!` and `%` lines are IPython's)
    if cell.cell_type == 'code':
      source = '\n'.join('pass' if line.lstrip().startswith(('!', '%')) else line for line in cell.source.splitlines())
      compile(source, f'{NOTEBOOK.name}, cell {i}', 'exec')


@pytest.mark.slow
def test_notebook_runs_headless_in_tiny_mode(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name='python3', timeout=180, resources={'metadata': {'path': str(REPO)}})
  client.execute(env=kernel_env(tmp_path))  # raises CellExecutionError, with the cell's traceback, on any error

  code = [cell for cell in nb.cells if cell.cell_type == 'code']
  table = outputs_text(code[-1])
  assert '| method | test acc. (last) | test acc. (best) |' in table
  assert '| RMDNet | ' in table and '| CE | ' in table and 'RMDNet - CE' in table
  assert 'TINY: not installing anything.' in outputs_text(code[1])  # pip never ran
  plots = [out for out in code[-2].outputs if 'image/png' in out.get('data', {})]
  assert len(plots) == 1
  for run in ('rmdnet', 'ce'):
    assert (tmp_path / run / 'results.json').is_file()
  assert (tmp_path / 'curves.png').is_file()
