"""benchmarks.import_time: a fresh process per repeat, the median, and whether TensorFlow came in."""

import json

from benchmarks import import_time


def test_measures_fresh_imports_and_reports_tensorflow(tmp_path):
  out = tmp_path / 'import.json'
  assert import_time.main(['--module=json', '--repeats=3', f'--out={out}']) == 0
  result = json.loads(out.read_text())
  assert len(result['seconds']) == 3 and all(s > 0 for s in result['seconds'])
  assert min(result['seconds']) <= result['median_s'] <= max(result['seconds'])
  assert result['imports_tensorflow'] is False
