"""Small-file I/O of a run: atomic local writes, and no local directory made for a bucket path."""

import os

from rmdnet_jax import fileio
from rmdnet_jax.training import metrics


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'sub' / 'a.json'
  fileio.write_text(path, 'one')
  fileio.write_text(path, 'two')
  assert fileio.read_text(path) == 'two'
  assert os.listdir(tmp_path / 'sub') == ['a.json']


def test_bucket_paths_are_kept_as_given():
  assert fileio.is_remote('gs://bucket/run') and not fileio.is_remote('/tmp/run')
  assert fileio.absolute('gs://bucket/run') == 'gs://bucket/run'
  assert fileio.absolute('run') == os.path.abspath('run')


def test_jsonl_writer_keeps_rows_of_an_earlier_process(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  metrics.JsonlWriter(path).write_scalars(1, {'a': 1.0})
  metrics.JsonlWriter(path).write_scalars(2, {'a': 2.0})  # a resumed run opens a new writer
  assert [r['step'] for r in metrics.read_jsonl(path)] == [1, 2]
