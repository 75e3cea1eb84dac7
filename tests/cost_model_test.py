"""benchmarks/cost_model.py: the time arithmetic, the grid count, the tables from a small FLOP record, and XLA's
FLOP count of the real steps at a tiny width (the only part that compiles: the RGRL and CE steps, ~20 s)."""

import json
import pathlib

import pytest

from benchmarks import cost_model

REPO = pathlib.Path(__file__).resolve().parents[1]
SYSTEM = cost_model.System('test-4', 'test-4', 4, 100.0, 'test', 2.0, 'test')


def small_flops(**overrides) -> dict:
  """A FLOP record with round numbers: 1 TFLOP per SimSiam image, no evaluation, no relation loss."""
  record = {
      'settings': {
          'model': 'resnet18',
          'width': 64,
          'projector_dim': 2048,
          'predictor_dim': 512,
          'image_size': 32,
          'dtype': 'bfloat16',
          'num_devices': 1,
      },
      'steps': {
          'simsiam': {'global_batch': 512, 'flops_per_image': 1e12, 'flops_source': 'test'},
          'rgrl': {'global_batch': 128, 'flops_per_image': 0.5e9, 'flops_source': 'test'},
          'ce': {'global_batch': 128, 'flops_per_image': 0.25e9, 'flops_source': 'test'},
      },
      'forward': {
          'teacher_features': {'batch': 1024, 'flops_per_image': 0.0, 'dim': 0, 'flops_source': 'test'},
          'student_logits': {'batch': 1024, 'flops_per_image': 0.0, 'flops_source': 'test'},
      },
      'relation': {'global_batch': 128, 'dim': 512, 'flops': 0.0, 'flops_source': 'test'},
  }
  record.update(overrides)
  return record


def test_time_is_flop_over_chips_peak_and_mfu():
  flop = 3e18
  seconds = cost_model.wall_seconds(flop, 8, 197.0, 0.35)
  assert seconds == pytest.approx(flop / (8 * 197e12 * 0.35))
  assert cost_model.wall_seconds(flop, 8, 197.0, 0.70) == pytest.approx(seconds / 2)  # double MFU, half time
  assert cost_model.wall_seconds(flop, 4, 197.0, 0.35) == pytest.approx(seconds * 2)  # half the chips
  assert cost_model.cost_usd(7200, 8, 1.5) == pytest.approx(2 * 8 * 1.5)
  assert cost_model.cost_usd(7200, 8, None) is None
  with pytest.raises(ValueError, match='mfu'):
    cost_model.wall_seconds(flop, 8, 197.0, 0)


def test_stage_work_counts_epochs_images_eval_and_the_relation_copies():
  flops = small_flops()
  flops['forward']['student_logits']['flops_per_image'] = 1e8
  flops['relation']['flops'] = 1e6
  work = cost_model.stage_work(flops, 'rgrl', epochs=2, batch=128, chips=8)
  steps = 2 * (50_000 // 128)
  # epochs x images x flop/image, plus 7 more copies of the relation loss per step on 8 chips.
  assert work['train'] == pytest.approx(steps * 128 * 0.5e9 + steps * 7 * 1e6)
  # Two evaluations of test + train sets, then the final report: one more evaluation and one training-set pass.
  assert work['eval'] == pytest.approx((2 * 60_000 + 60_000 + 50_000) * 1e8)
  rm = cost_model.stage_work(flops, 'rm', epochs=800, batch=512, chips=4)
  seconds = cost_model.stage_seconds(rm, SYSTEM, 0.5)
  assert seconds == pytest.approx(800 * 97 * 512 * 1e12 / (4 * 100e12 * 0.5))
  assert cost_model.stage_seconds(rm, SYSTEM, 0.25) == pytest.approx(2 * seconds)


def test_grid_cells_are_counted_from_launch_grid_sh():
  cells = cost_model.grid_cells(cost_model.list_grid('paper'))
  kinds = [c['kind'] for c in cells]
  assert (len(cells), kinds.count('rm'), kinds.count('rgrl'), kinds.count('ce')) == (66, 6, 30, 30)
  assert {c['epochs'] for c in cells if c['kind'] == 'rm'} == {800}
  assert {(c['epochs'], c['batch']) for c in cells if c['kind'] != 'rm'} == {(200, 128)}
  [cell] = cost_model.grid_cells(
      ['short configs/cifar10_rmdnet.py --config.stages=rgrl --config.rgrl.epochs=5 ' '--config.method.distill=False']
  )
  assert cell == {'name': 'short', 'kind': 'ce', 'epochs': 5, 'batch': 128}


def test_table_is_generated_from_a_small_flop_record(tmp_path):
  flops_path = tmp_path / 'flops.json'
  flops_path.write_text(json.dumps(small_flops()))
  cost_model.main(
      [
          'table',
          f'--flops={flops_path}',
          '--cpu=',
          '--mfu=0.5',
          '--alt_mfu=0.25',
          '--price=v5e-8=2',
          f'--out={tmp_path}',
      ]
  )
  markdown = (tmp_path / 'cost_model.md').read_text()
  assert 'ESTIMATE at 50% MFU' in markdown
  assert 'paper grid, 66 cells (6 teachers + 30 RMDNet + 30 CE)' in markdown
  # RM on a v5e-8: 800 x 97 x 512 images x 1 TFLOP / (8 x 197 TFLOP/s x 0.5) = 50,420 s = 14.0 h; x 8 chips x $2.
  rm_time = [line for line in markdown.splitlines() if line.startswith('| RM (SimSiam teacher)')]
  assert '| 14.0 h |' in rm_time[0] and '| $224 |' in rm_time[1]
  record = json.loads((tmp_path / 'cost_model.json').read_text())
  grid = record['results'][-1]['systems']['v5e-8 (v5litepod-8)']['mfu']
  assert grid['0.25']['seconds'] == pytest.approx(2 * grid['0.5']['seconds'])


def test_a_system_without_a_price_says_so():
  cells = cost_model.grid_cells(['t configs/cifar10_rmdnet.py --config.stages=rm'])
  _, markdown = cost_model.build(
      small_flops(),
      cells,
      None,
      mfu=0.35,
      alt_mfu=None,
      systems=[cost_model.System('x', 'x', 4, 100.0, 'test', None, 'not found')],
  )
  rm_cost = [line for line in markdown.splitlines() if line.startswith('| RM (SimSiam teacher)')][1]
  assert rm_cost.endswith('| price not found |')


def test_the_performance_page_shows_the_committed_tables_verbatim():
  generated = (REPO / 'benchmarks' / 'results' / 'cost_model' / 'cost_model.md').read_text()
  page = (REPO / 'docs' / 'performance.md').read_text()
  tables = []
  for heading in ('## Wall time (ESTIMATE)', '## On-demand cost (ESTIMATE'):
    lines = generated.split(heading, 1)[1].split('\n\n')[1]
    assert lines.startswith('| configuration |')
    tables.append(lines)
  for table in tables:
    assert table in page, 'docs/performance.md "Time and cost (estimate)" differs from benchmarks/results/cost_model/'


@pytest.mark.parametrize(
    'argv, message',
    [
        (['table', '--flops=/nonexistent/flops.json'], 'cost_model measure'),
        (['table', '--price=v9-8=1'], 'unknown system'),
        (['table', '--mfu=35'], 'fractions'),
    ],
)
def test_bad_input_is_one_sentence(argv, message):
  with pytest.raises(SystemExit, match=message):
    cost_model.main(argv)


@pytest.mark.slow
def test_xla_flops_per_image_at_a_tiny_width(tmp_path):
  record = cost_model.main(
      [
          'measure',
          '--model=resnet_tiny',
          '--width=4',
          '--image_size=8',
          '--projector_dim=16',
          '--rgrl_batch=16',
          '--eval_batch=16',
          '--steps=rgrl,ce',
          f'--out={tmp_path}',
      ]
  )
  assert json.loads((tmp_path / 'flops.json').read_text())['steps'] == json.loads(json.dumps(record['steps']))
  rgrl, ce = record['steps']['rgrl']['flops_per_image'], record['steps']['ce']['flops_per_image']
  assert ce > 0
  # The RGRL step is the CE step plus the teacher's forward pass and the relation terms.
  teacher = record['forward']['teacher_features']['flops_per_image']
  assert rgrl > ce + 0.5 * teacher > ce
  assert record['relation']['flops'] > 0 and record['forward']['student_logits']['flops_per_image'] > 0
