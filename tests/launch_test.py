"""launch/tpu_vm.sh and launch/grid.sh, run with --dry-run: the gcloud commands they would run, checked word by word.

The printed commands are parsed the way they would be executed: shlex.split once as the local shell does, again for
the --command string that ssh hands to the remote login shell, and once more for the command line tmux runs. One
test also executes the remote command with a real bash and stand-ins for tmux and python, so the quoting is checked
by the shell itself, not only by shlex. A fake gcloud/gsutil that fails is put first on PATH: nothing here can reach
Google Cloud even if --dry-run were broken.
"""

import os
import pathlib
import shlex
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU_VM = REPO / 'launch' / 'tpu_vm.sh'
GRID = REPO / 'launch' / 'grid.sh'

SPACED = '--config.relation.teacher_checkpoint=/tmp/a b'
# Quotes, $, ; and a glob: each must reach rmdnet_jax.main as typed, neither expanded nor split.
NASTY = """--config.data.data_dir=$HOME/it's "here"; echo *"""
NOISE_SETTINGS = {
    ('symmetric', '0.2'),
    ('symmetric', '0.5'),
    ('symmetric', '0.8'),
    ('asymmetric', '0.4'),
    ('pairflip', '0.45'),
}


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """The environment of every script run: no TPU_* settings from the caller, failing gcloud and gsutil."""
  bin_dir = tmp_path_factory.mktemp('bin')
  for tool in ('gcloud', 'gsutil'):
    fake = bin_dir / tool
    fake.write_text('#!/bin/sh\necho "the launch tests must never run $0" >&2\nexit 99\n')
    fake.chmod(0o755)
  environ = {k: v for k, v in os.environ.items() if not k.startswith('TPU_')}
  environ['PATH'] = f"{bin_dir}{os.pathsep}{environ['PATH']}"
  return environ


def script(env, path, *args, ok=True):
  proc = subprocess.run(['bash', str(path), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
  if ok:
    assert proc.returncode == 0, proc.stderr
  return proc


def printed(env, path, *args):
  """The commands a dry run prints, each as the argv the local shell would run."""
  if path == TPU_VM:  # right after the subcommand: what follows -- belongs to grid.sh
    args = (args[0], '--dry-run') + args[1:]
  else:
    args += ('--dry-run',)
  out = script(env, path, *args).stdout
  return [shlex.split(line) for line in out.splitlines() if line.strip()]


def ssh_remote(argv, worker):
  """The remote command of a `gcloud compute tpus tpu-vm ssh` argv, split as the remote login shell splits it."""
  assert argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'], argv
  assert f'--worker={worker}' in argv
  [command] = [a[len('--command=') :] for a in argv if a.startswith('--command=')]
  return command, shlex.split(command)


def simple_commands(command_line):
  """A shell command line as its simple commands (split at ; && || |), with redirections left in."""
  lexer = shlex.shlex(command_line, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  commands, current = [], []
  for token in lexer:
    if token in (';', '&&', '||', '|'):
      commands.append(current)
      current = []
    else:
      current.append(token)
  return [c for c in commands + [current] if c]


def detached(remote_words, session='rmdnet'):
  """The command line a `tmux new-session -d -s SESSION ... CMD` in the remote command runs, as simple commands."""
  i = remote_words.index('tmux')
  assert remote_words[i + 1 : i + 5] == ['new-session', '-d', '-s', session], remote_words
  return simple_commands(remote_words[-1])


def python_argv(commands):
  [argv] = [c for c in commands if c[0] == 'python']
  return argv


def run_cmd(env, *args):
  [argv] = printed(env, TPU_VM, 'run', '--name=t', *args)
  command, words = ssh_remote(argv, 'all')
  return command, words, detached(words)


# ----------------------------------------------------------------------------------------------------------------
# tpu_vm.sh
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('path', [TPU_VM, GRID])
def test_help(env, path):
  out = script(env, path, '--help').stdout
  assert 'Usage: launch/' in out and '--dry-run' in out


def test_create(env):
  [argv] = printed(env, TPU_VM, 'create', '--name=pod', '--accelerator-type=v4-32', '--spot')
  assert argv == [
      'gcloud',
      'compute',
      'tpus',
      'tpu-vm',
      'create',
      'pod',
      '--zone=us-central2-b',
      '--accelerator-type=v4-32',
      '--version=tpu-ubuntu2204-base',
      '--spot',
  ]
  [argv] = printed(
      env, TPU_VM, 'create', '--accelerator-type', 'v5litepod-8', '--zone', 'us-west4-a', '--preemptible', '--project=p'
  )
  assert argv[5:] == [
      'rmdnet',
      '--zone=us-west4-a',
      '--project=p',
      '--accelerator-type=v5litepod-8',
      '--version=v2-alpha-tpuv5-lite',
      '--preemptible',
  ]
  # v4 has one zone; for other types the zone has to be chosen.
  proc = script(env, TPU_VM, 'create', '--accelerator-type=v5litepod-8', '--dry-run', ok=False)
  assert proc.returncode != 0 and '--zone' in proc.stderr
  proc = script(env, TPU_VM, 'create', '--spot', '--preemptible', '--dry-run', ok=False)
  assert proc.returncode != 0 and 'one of --spot and --preemptible' in proc.stderr


def test_setup_from_repo_runs_on_all_workers(env):
  url = 'https://example.com/team/rmdnet_jax.git'
  [argv] = printed(env, TPU_VM, 'setup', '--name=t', f'--repo={url}', '--data=cifar10')
  command, words = ssh_remote(argv, 'all')
  commands = simple_commands(command)
  assert ['else', 'git', 'clone', url, 'rmdnet_jax'] in commands  # or git pull, in an existing clone
  assert ['.venv/bin/python', '-m', 'pip', 'install', '-q', '-r', 'requirements.txt', 'jax[tpu]==0.10.2'] in commands
  assert ['.venv/bin/python', '-m', 'rmdnet_jax.datasets.prepare_data', '--dataset=cifar10'] in commands
  # TensorFlow only where data is prepared, before preparing it.
  prepare_pins = [
      '.venv/bin/python',
      '-m',
      'pip',
      'install',
      '-q',
      '-r',
      'requirements-prepare.txt',
      'jax[tpu]==0.10.2',
  ]
  assert commands.index(prepare_pins) < commands.index(
      ['.venv/bin/python', '-m', 'rmdnet_jax.datasets.prepare_data', '--dataset=cifar10']
  )
  assert ['python3.11', '-m', 'venv', '.venv'] in commands
  assert not any('cifar100' in word for word in words)


def test_setup_local_copies_to_all_workers(env):
  tar, scp, ssh = printed(env, TPU_VM, 'setup', '--name=t', '--local')
  assert tar[:2] == ['git', '-C'] and 'tar' in tar
  tarball = tar[tar.index('-czf') + 1]
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=all' in scp
  assert scp[5:7] == [tarball, 't:rmdnet_jax_code.tar.gz']
  command, _ = ssh_remote(ssh, 'all')
  assert ['tar', '-xzf', 'rmdnet_jax_code.tar.gz', '-C', 'rmdnet_jax'] in simple_commands(command)
  proc = script(env, TPU_VM, 'setup', '--dry-run', ok=False)
  assert proc.returncode != 0 and '--repo' in proc.stderr


@pytest.mark.parametrize(
    'accelerator,multihost',
    [
        ('v4-8', False),
        ('v5litepod-8', False),
        ('v5p-8', False),
        ('v6e-4', False),
        ('v4-16', True),
        ('v4-32', True),
        ('v5litepod-16', True),
        ('v5p-16', True),
    ],
)
def test_run_passes_config_and_overrides_intact(env, accelerator, multihost):
  workdir = 'gs://bucket/rmdnet runs/c10' if multihost else 'workdirs/c10'
  _, words, inner = run_cmd(
      env,
      f'--accelerator-type={accelerator}',
      '--zone=z',
      '--config=configs/cifar100_rmdnet.py',
      f'--workdir={workdir}',
      SPACED,
      '--config.rgrl.epochs=3',
      NASTY,
  )
  assert words[:2] == ['cd', 'rmdnet_jax']
  expected = ['python', '-m', 'rmdnet_jax.main', '--config=configs/cifar100_rmdnet.py', f'--workdir={workdir}']
  expected += ['--multihost'] * multihost + [SPACED, '--config.rgrl.epochs=3', NASTY]
  assert python_argv(inner) == expected
  # Inside tmux, in the venv, with all output going to a log file.
  assert inner[0] == ['exec', '>>', 'logs/c10.log', '2', '>&', '1']
  assert ['.', '.venv/bin/activate'] in inner


def test_run_remote_command_in_a_real_shell(env, tmp_path):
  """The remote command run by bash as ssh would run it, with a tmux and a python that record their argv."""
  [argv] = printed(env, TPU_VM, 'run', '--name=t', '--workdir=workdirs/c10', SPACED, NASTY)
  command, _ = ssh_remote(argv, 'all')
  home = tmp_path / 'home'
  venv_bin = home / 'rmdnet_jax' / '.venv' / 'bin'
  venv_bin.mkdir(parents=True)
  record = tmp_path / 'argv'
  (venv_bin / 'activate').write_text(f'PATH="{venv_bin}:$PATH"\n')
  (venv_bin / 'python').write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > "{record}"\n')
  (venv_bin / 'python').chmod(0o755)
  fake_bin = tmp_path / 'bin'
  fake_bin.mkdir()
  # tmux new-session -d -s NAME -c DIR CMD runs CMD with the user's shell in DIR; the stand-in does it in the
  # foreground.
  (fake_bin / 'tmux').write_text(
      '#!/bin/bash\n[ "$1 $2 $3" = "new-session -d -s" ] || exit 9\n' 'cd "$6" && exec bash -c "$7"\n'
  )
  (fake_bin / 'tmux').chmod(0o755)
  shell_env = {**env, 'HOME': str(home), 'PATH': f"{fake_bin}{os.pathsep}{env['PATH']}"}
  proc = subprocess.run(['bash', '-c', command], cwd=home, env=shell_env, capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  args = record.read_text().split('\0')[:-1]
  assert args == [
      '-m',
      'rmdnet_jax.main',
      '--config=configs/cifar10_rmdnet.py',
      '--workdir=workdirs/c10',
      SPACED,
      NASTY,
  ]
  log = (home / 'rmdnet_jax' / 'logs' / 'c10.log').read_text()
  assert '[tpu_vm.sh] exit status 0' in log
  assert os.readlink(home / 'rmdnet_jax' / 'logs' / 'latest.log') == '../logs/c10.log'


def test_multihost_needs_a_gcs_workdir(env):
  proc = script(env, TPU_VM, 'run', '--accelerator-type=v4-32', '--workdir=workdirs/c10', '--dry-run', ok=False)
  assert proc.returncode != 0 and 'gs://' in proc.stderr and not proc.stdout


def test_gcs_workdir_is_passed_through(env):
  _, _, inner = run_cmd(env, '--workdir=gs://bucket/exp/c10')
  assert '--workdir=gs://bucket/exp/c10' in python_argv(inner)
  mkdir, rsync = printed(env, TPU_VM, 'copy-back', '--workdir=gs://bucket/exp/c10', '--dest=out')
  assert mkdir == ['mkdir', '-p', 'out']
  assert rsync == ['gsutil', '-m', 'rsync', '-r', 'gs://bucket/exp/c10', 'out/c10']


def test_copy_back_logs_delete(env):
  _, scp = printed(env, TPU_VM, 'copy-back', '--name=t', '--workdir=workdirs/c10')
  assert scp == [
      'gcloud',
      'compute',
      'tpus',
      'tpu-vm',
      'scp',
      '--recurse',
      't:rmdnet_jax/workdirs/c10',
      'workdirs',
      '--zone=us-central2-b',
      '--worker=0',
  ]
  _, scp = printed(env, TPU_VM, 'copy-back', '--name=t', '--workdir=/data/c10/')
  assert scp[6] == 't:/data/c10'
  [ssh] = printed(env, TPU_VM, 'logs', '--name=t', '--follow', '--lines=20')
  _, words = ssh_remote(ssh, '0')
  assert words == ['tail', '-n', '20', '-F', 'rmdnet_jax/logs/latest.log']
  [delete] = printed(env, TPU_VM, 'delete', '--name=t')
  assert delete == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 't', '--zone=us-central2-b']


def test_overrides_only_for_run(env):
  proc = script(env, TPU_VM, 'create', '--config.seed=1', '--dry-run', ok=False)
  assert proc.returncode != 0 and 'run only' in proc.stderr
  proc = script(env, TPU_VM, 'run', '--dry-run', '--no-such-option=1', ok=False)
  assert proc.returncode != 0 and 'unknown option' in proc.stderr


def test_tpu_vm_grid_starts_the_queue_on_all_workers(env):
  [argv] = printed(
      env,
      TPU_VM,
      'grid',
      '--name=pod',
      '--accelerator-type=v4-32',
      '--workdir=gs://bucket/grid',
      '--',
      '--cells=my cells.txt',
  )
  _, words = ssh_remote(argv, 'all')
  inner = detached(words)
  assert ['launch/grid.sh', '--base=gs://bucket/grid', '--multihost', '--cells=my cells.txt'] in inner
  assert inner[0][:3] == ['exec', '>>', 'logs/grid.log']


# ----------------------------------------------------------------------------------------------------------------
# grid.sh
# ----------------------------------------------------------------------------------------------------------------


def options(argv):
  return dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)


def test_default_grid(env):
  cells = script(env, GRID, '--list').stdout.splitlines()
  commands = printed(env, GRID, '--base=gs://bucket/grid')
  assert len(cells) == len(commands) == 66  # 2 datasets x 5 noises x 3 seeds x {RMDNet, CE} + 6 teachers
  names = [line.split()[0] for line in cells]
  assert len(set(names)) == 66
  runs = [options(c[: c.index('>>')]) for c in commands]
  workdirs = [r['workdir'] for r in runs]
  assert len(set(workdirs)) == 66 and all(w.startswith('gs://bucket/grid/') for w in workdirs)
  assert [w.rsplit('/', 1)[1] for w in workdirs] == names

  teachers = [r for r in runs if r['config.stages'] == 'rm']
  rmdnet = [r for r in runs if r['config.stages'] == 'rgrl' and 'config.method.distill' not in r]
  ce = [r for r in runs if r.get('config.method.distill') == 'False']
  assert (len(teachers), len(rmdnet), len(ce)) == (6, 30, 30)
  for method in (rmdnet, ce):
    assert {(r['config'], r['config.noise.kind'], r['config.noise.rate'], r['config.seed']) for r in method} == {
        (f'configs/{d}_rmdnet.py', kind, rate, str(seed))
        for d in ('cifar10', 'cifar100')
        for kind, rate in NOISE_SETTINGS
        for seed in range(3)
    }
    assert all(r['config.noise.seed'] == r['config.seed'] for r in method)
  # Each RMDNet cell distils from the teacher of its dataset and seed, which runs earlier in the queue.
  for r in rmdnet:
    teacher = r['config.relation.teacher_checkpoint']
    assert teacher.endswith('/rm')
    t = workdirs.index(teacher[: -len('/rm')])
    assert t < workdirs.index(r['workdir'])
    assert (runs[t]['config'], runs[t]['config.seed']) == (r['config'], r['config.seed'])
  assert all('config.relation.teacher_checkpoint' not in r for r in ce)


def test_grid_cells_file_round_trip(env, tmp_path):
  cells = tmp_path / 'cells.txt'
  listed = script(env, GRID, '--list', '--seeds=1').stdout
  cells.write_text(
      '# seed 1 only, plus one cell\n\n'
      + listed
      + f"mine configs/tiny.py {shlex.quote(SPACED)} '--config.data.data_dir={{base}}/d'\n"
  )
  commands = printed(env, GRID, f'--cells={cells}', '--base=w')
  assert commands[:-1] == printed(env, GRID, '--seeds=1', '--base=w')
  assert commands[-1][: commands[-1].index('>>')] == [
      'python',
      '-m',
      'rmdnet_jax.main',
      '--config=configs/tiny.py',
      '--workdir=w/mine',
      SPACED,
      '--config.data.data_dir=w/d',
  ]
  assert len(commands) == 23
  cells.write_text('a configs/tiny.py\na configs/tiny.py --config.seed=1\n')
  proc = script(env, GRID, f'--cells={cells}', '--list', ok=False)
  assert proc.returncode != 0 and 'used twice' in proc.stderr


def test_grid_queue_skips_the_cells_of_a_failed_teacher(env, tmp_path):
  calls = tmp_path / 'calls'
  fake_python = tmp_path / 'python'
  # Fails the teacher (stages=rm), succeeds otherwise.
  fake_python.write_text(
      f'#!/bin/sh\necho "$*" >> "{calls}"\n' 'case " $* " in *" --config.stages=rm "*) exit 3 ;; esac\n'
  )
  fake_python.chmod(0o755)
  cells = tmp_path / 'cells.txt'
  cells.write_text(
      'teacher configs/tiny.py --config.stages=rm\n'
      'student configs/tiny.py --config.stages=rgrl --config.relation.teacher_checkpoint={base}/teacher/rm\n'
      'ce configs/tiny.py --config.method.distill=False\n'
  )
  proc = script(
      env,
      GRID,
      f'--cells={cells}',
      f'--python={fake_python}',
      f'--base={tmp_path}/w',
      f'--log-dir={tmp_path}/logs',
      ok=False,
  )
  assert proc.returncode == 1
  ran = calls.read_text().splitlines()
  assert len(ran) == 2 and '--workdir=' + f'{tmp_path}/w/teacher' in ran[0] and f'{tmp_path}/w/ce' in ran[1]
  assert 'student: skipped, it needs teacher' in proc.stdout
  assert sorted(p.name for p in (tmp_path / 'logs').iterdir()) == ['ce.log', 'teacher.log']


def test_grid_queue_stops_at_a_preempted_cell_and_calls_it_resumable(env, tmp_path):
  calls = tmp_path / 'calls'
  fake_python = tmp_path / 'python'
  # The second cell is preempted (rmdnet_jax.main exits 75 after its SIGTERM checkpoint).
  fake_python.write_text(
      f'#!/bin/sh\necho "$*" >> "{calls}"\n' 'case " $* " in *" --config.seed=1 "*) exit 75 ;; esac\n'
  )
  fake_python.chmod(0o755)
  cells = tmp_path / 'cells.txt'
  cells.write_text('a configs/tiny.py\nb configs/tiny.py --config.seed=1\nc configs/tiny.py --config.seed=2\n')
  proc = script(
      env,
      GRID,
      f'--cells={cells}',
      f'--python={fake_python}',
      f'--base={tmp_path}/w',
      f'--log-dir={tmp_path}/logs',
      ok=False,
  )
  assert proc.returncode == 75, proc.stdout
  assert len(calls.read_text().splitlines()) == 2  # c was not started on a machine that is going away
  assert 'b: preempted' in proc.stdout and 'rerun this command' in proc.stdout
  assert 'FAILED' not in proc.stdout


def test_run_without_dry_run_asks_the_vm_for_its_type(env, tmp_path):
  """The real (not dry) path, against a stand-in gcloud: run asks for the accelerator type, then runs exactly the
  ssh command that the dry run prints."""
  record = tmp_path / 'gcloud_calls'
  fake = tmp_path / 'bin' / 'gcloud'
  fake.parent.mkdir()
  fake.write_text(
      f'#!/bin/bash\nprintf "%q " "$@" >> "{record}"; echo >> "{record}"\n'
      'if [ "$4" = describe ]; then echo "projects/p/locations/z/acceleratorTypes/v4-32"; fi\n'
  )
  fake.chmod(0o755)
  real_env = {**env, 'PATH': f"{fake.parent}{os.pathsep}{env['PATH']}"}
  args = ['--name=pod', '--workdir=gs://bucket/c10', SPACED]
  proc = script(real_env, TPU_VM, 'run', *args)
  describe, ssh = [shlex.split(line) for line in record.read_text().splitlines()]
  assert describe[:6] == ['compute', 'tpus', 'tpu-vm', 'describe', 'pod', '--zone=us-central2-b']
  _, words = ssh_remote(['gcloud'] + ssh, 'all')
  assert '--multihost' in python_argv(detached(words))
  assert ['gcloud'] + ssh == printed(env, TPU_VM, 'run', '--accelerator-type=v4-32', *args)[0]
  assert "Started in tmux session 'rmdnet'" in proc.stdout


def test_methods_grid_has_every_method_alone_and_with_rmdnet_on_every_noise(env):
  from configs import noisy_cifar
  from rmdnet_jax import methods

  commands = printed(env, GRID, '--grid=methods', '--seeds=0', '--base=b')
  runs = [options(c[: c.index('>>')]) for c in commands]
  teachers = [r for r in runs if r['config.stages'] == 'rm']
  assert [r['workdir'] for r in teachers] == ['b/cifar10_simsiam_s0', 'b/cifar100_simsiam_s0']
  cells = set()
  for r in runs:
    if r['config.stages'] != 'rgrl':
      continue
    params = noisy_cifar.parse(r['config'].split(':', 1)[1])  # every cell is a valid parameter string
    cells.add((params['dataset'], params['noise'], params['method'], params['rmdnet']))
    teacher = r.get('config.relation.teacher_checkpoint')
    assert (teacher == f"b/{params['dataset']}_simsiam_s0/rm") == (params['rmdnet'] == 'true')
  for dataset in ('cifar10', 'cifar100'):
    noises = {n for d, n, _, _ in cells if d == dataset}
    assert {'sym20', 'sym50', 'sym80', 'sym90', 'asym40', 'pair45', 'inst20', 'inst40'} <= noises
    for noise in noises:
      assert {(m, on) for d, n, m, on in cells if (d, n) == (dataset, noise)} == {
          (m, on) for m in methods.METHODS for on in ('true', 'false')
      }
  assert len(commands) == len(cells) + 2


def test_ablations_grid(env):
  commands = printed(env, GRID, '--grid=ablations', '--seeds=0,1', '--base=b')
  runs = [options(c[: c.index('>>')]) for c in commands]
  assert len(runs) == 2 * 12  # per seed: the teacher, RMDNet and 10 ablations
  seed0 = [r for r in runs if r['workdir'].endswith('_s0')]
  overrides = [
      {k: v for k, v in r.items() if k.startswith('config.relation.') and 'teacher_checkpoint' not in k}
      for r in seed0
      if r['config.stages'] == 'rgrl'
  ]
  assert {} in overrides
  for key, value in [
      ('edge_weight', '0.0'),
      ('node_weight', '0.0'),
      ('K', '0.1'),
      ('K', '5.0'),
      ('teacher_layer', 'projector'),
      ('edge_kind', 'kl'),
      ('edge_kind', 'mse'),
      ('node_kind', 'cosine'),
  ]:
    assert {f'config.relation.{key}': value} in overrides, key
  proc = script(env, GRID, '--grid=nope', '--list', ok=False)
  assert proc.returncode != 0 and '--grid must be paper, methods, ablations or study' in proc.stderr


def test_study_grid(env):
  """The CPU study: one SimSiam cell, then CE and RMDNet cells on its epoch-5 and epoch-20 checkpoints, each with
  the data directory that --data-dir names."""
  commands = printed(env, GRID, '--grid=study', '--base=b', '--data-dir=/data/tfds')
  runs = {r['workdir'].split('/')[-1]: r for r in (options(c[: c.index('>>')]) for c in commands)}
  assert len(runs) == 15 and all(r['config'] == 'configs/cifar10_cpu_study.py' for r in runs.values())
  assert all(r['config.data.data_dir'] == '/data/tfds' for r in runs.values())
  assert runs['study_simsiam']['config.stages'] == 'rm'
  assert runs['study_ce']['config.method.distill'] == 'False'
  rmdnet = [r for name, r in runs.items() if name not in ('study_simsiam', 'study_ce', 'study_ce_b256')]
  assert all(r['config.relation.teacher_checkpoint'] == 'b/study_simsiam/rm' for r in rmdnet)
  assert {r['config.relation.teacher_step'] for r in rmdnet} == {'160', '640'}
  for epoch, step in (('5', '160'), ('20', '640')):
    ks = {runs[f'study_t{epoch}_K{k}']['config.relation.K'] for k in ('0.1', '0.3', '1')}
    assert ks == {'0.1', '0.3', '1'} and runs[f'study_t{epoch}_K1']['config.relation.teacher_step'] == step
  assert runs['study_t5_K12.8_per_node_b256']['config.relation.normalize'] == 'per_node'
