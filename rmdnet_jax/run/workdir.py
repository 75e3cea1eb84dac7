"""The work directory of a run: refused at once when it cannot be used, and held by one run at a time.

    prepare(workdir)   creates it; a path that is a file, lies under a file or cannot be written is refused
    check_config(config, workdir)
                       a later run must have the config saved in WORKDIR/config.json (but
                       config_files.RESUMABLE_KEYS); a key whose default changed since (DEFAULTS_CHANGED) keeps
                       its saved value when the run has today's default; `save` writes it
    lock(workdir)      WORKDIR/run.lock (pid, host, start time, heartbeat) for the duration of the run; a second
                       run on the same directory is refused; a lock left by a dead process on this host, or one
                       whose heartbeat stopped STALE_AFTER_SECS ago (a lost host), is taken over

Multi-host runs: only process 0 writes the run's small files, so only process 0 takes the lock; when it refuses,
that process exits and the run's other processes stop with the JAX distributed service (they cannot train
without it). A `gs://` work directory has no atomic create-if-absent here, so its lock is best effort: it catches a
second run started while the first one is running, not two runs started within the same second.

A preempted VM may die before its run removes the lock, and a recreated VM has another host name: the holder
rewrites the lock's heartbeat every HEARTBEAT_SECS, so a lock of another host that has not been refreshed for
STALE_AFTER_SECS is taken over, and resuming a spot VM's run needs no hand work after that long (or deleting the
lock, as the refusal says, at once).
"""

import contextlib
import json
import os
import socket
import threading
import time
from typing import Iterator, Optional

import jax
from absl import logging
from etils import epath

from rmdnet_jax import fileio
from rmdnet_jax.datasets import data
from rmdnet_jax.run import config_files
from rmdnet_jax.training import config_checks

LOCK_FILE = 'run.lock'
# The holder refreshes the lock's heartbeat this often; another host's lock not refreshed for STALE_AFTER_SECS is
# taken as left by a lost host (generous: clocks of hosts differ, and a bucket write can stall).
HEARTBEAT_SECS = 60.0
STALE_AFTER_SECS = 15 * 60.0


class WorkdirError(RuntimeError):
  """The work directory cannot be used (a file, not writable, in use by another run, a damaged run file)."""


class WorkdirConfigMismatch(RuntimeError):
  """The work directory holds a run with another config."""


def read_saved_config(workdir: str) -> Optional[dict]:
  """`config_files.read_saved_config` (flattened, brought up to date, or None), a damaged file refused as a
  WorkdirError in one sentence."""
  try:
    return config_files.read_saved_config(workdir)
  except ValueError as e:
    raise WorkdirError(
        f'{os.path.join(workdir, config_files.SAVED_CONFIG)} is damaged ({data.brief_error(e)}); restore it, or '
        "delete it to adopt this run's config (only if the run in that directory had this config)."
    ) from e


def check_config(config, workdir: str, *, save: bool = True) -> None:
  """Later runs in a work directory must have the config in its WORKDIR/config.json (but config_files.RESUMABLE_KEYS); `save`
  writes the file. The run checks first and saves only once the data, labels and teacher are found good, so a
  refused start leaves no config behind that would refuse the corrected command."""
  saved = read_saved_config(workdir)
  if saved is not None:
    current = config_files.flatten(json.loads(config.to_json_best_effort()))
    kept = config_files.kept_saved_values(saved, current, _default_values())
    for key, value in kept.items():
      logging.info("%s: resuming with its saved %s=%r (today's default is %r).", workdir, key, value, current[key])
      *sections, leaf = key.split('.')
      block = config
      for section in sections:
        block = block[section]
      block[leaf] = value
      current[key] = value
    changed = sorted(
        k for k in set(saved) | set(current) if k not in config_files.RESUMABLE_KEYS and saved.get(k) != current.get(k)
    )
    if changed and not config.allow_config_change:
      detail = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in changed[:5])
      raise WorkdirConfigMismatch(
          f'{workdir} holds a run with a different config ({detail}); use a new --workdir, or pass '
          '--config.allow_config_change=True to resume it with the new values.'
      )
  if save and jax.process_index() == 0:
    fileio.write_text(os.path.join(workdir, config_files.SAVED_CONFIG), config.to_json_best_effort(indent=2))


def _default_values() -> dict:
  """configs/default.py, flattened to dotted keys."""
  return config_files.flatten(json.loads(config_checks.default.get_config().to_json_best_effort()))


def _first_existing_ancestor(path: str) -> str:
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def prepare(workdir: str) -> None:
  """Creates `workdir` (and its parents), refusing with one sentence a path that cannot be a writable directory.

  Raises:
    WorkdirError: the path is a file, lies under a file, or cannot be created or written.
  """
  if fileio.is_remote(workdir):
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # A bucket needs no directories; kept for fakes.
    return
  path = os.path.abspath(workdir)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise WorkdirError(
        f'--workdir={workdir} is a file, not a directory; pass a directory path (it is created '
        'when missing), or move the file away.'
    )
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    blocker = _first_existing_ancestor(path)
    if os.path.lexists(blocker) and not os.path.isdir(blocker):
      raise WorkdirError(
          f'--workdir={workdir} cannot be created because {blocker} is a file, not a directory; pass '
          'a path under a directory.'
      ) from e
    raise WorkdirError(
        f'--workdir={workdir} cannot be created ({e.strerror or type(e).__name__} in {blocker}); '
        'pass a directory you can write to.'
    ) from e
  probe = os.path.join(path, f'.write_test.{os.getpid()}')
  try:
    with open(probe, 'w') as f:
      f.write('')
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
        f'--workdir={workdir} is not writable ({e.strerror or type(e).__name__}); pass a directory '
        'you can write to, or fix its permissions.'
    ) from e


def _process_start_time(pid: int) -> Optional[str]:
  """The start time of process `pid` in clock ticks since boot (Linux), which tells a reused pid apart."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _this_process() -> dict:
  return {
      'pid': os.getpid(),
      'host': socket.gethostname(),
      'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'process_start': _process_start_time(os.getpid()),
      'heartbeat': time.time(),
  }


def _heartbeat_age(holder: dict) -> Optional[float]:
  beat = holder.get('heartbeat')
  return time.time() - beat if isinstance(beat, (int, float)) else None


def _is_dead(holder: dict) -> bool:
  """Whether the lock's process is known to be gone: it ran on this host and its pid is free (or reused), or it
  ran on another host and its heartbeat stopped STALE_AFTER_SECS ago."""
  if holder.get('host') != socket.gethostname() or not isinstance(holder.get('pid'), int):
    age = _heartbeat_age(holder)  # Another host's process cannot be checked from here; its heartbeat can.
    return age is not None and age > STALE_AFTER_SECS
  pid = holder['pid']
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass  # Alive, and someone else's.
  start = _process_start_time(pid)
  return bool(holder.get('process_start')) and start is not None and start != holder['process_start']


def _read(path: str) -> Optional[dict]:
  try:
    holder = json.loads(fileio.read_text(path))
    return holder if isinstance(holder, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # Unreadable: treated as held by an unknown run.


def _refusal(workdir: str, path: str, holder: dict) -> WorkdirError:
  age = _heartbeat_age(holder)
  seen = f', last heartbeat {age:.0f} s ago' if age is not None else ''
  who = (
      f'process {holder.get("pid", "?")} on host {holder.get("host", "?")} (started {holder.get("started", "?")}'
      f'{seen})'
      if holder
      else 'a run whose lock file cannot be read'
  )
  return WorkdirError(
      f'{workdir} is in use by {who}, so a second run would overwrite its files; wait for that run to end or use '
      f'another --workdir, and if that run is gone (its host was lost), delete {path} and start again.'
  )


def _acquire_local(workdir: str, path: str, me: dict) -> None:
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      if holder is None:
        continue  # Released between our create and our read: try again.
      if not _is_dead(holder):
        raise _refusal(workdir, path, holder) from None
      # Stale: move it aside under a name of our own (only one taker can move it), check that what we moved is the
      # stale lock we judged, and create ours.
      aside = f'{path}.stale.{os.getpid()}'
      try:
        os.rename(path, aside)
      except FileNotFoundError:
        continue
      moved = _read(aside)
      if moved != holder:  # Another run took it over in between: put its lock back and give way.
        with contextlib.suppress(OSError):
          os.link(aside, path)
        os.remove(aside)
        raise _refusal(workdir, path, moved or {})
      os.remove(aside)
      logging.warning(
          'Took over %s from process %s on %s, which is no longer running.', path, holder.get('pid'), holder.get('host')
      )
      continue
    with os.fdopen(fd, 'w') as f:
      f.write(json.dumps(me))
    return
  raise _refusal(workdir, path, _read(path) or {})


def _acquire_remote(workdir: str, path: str, me: dict) -> None:
  holder = _read(path) if fileio.exists(path) else None
  if holder is not None and not _is_dead(holder):
    raise _refusal(workdir, path, holder)
  fileio.write_text(path, json.dumps(me))


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/run.lock (on process 0) while the body runs; removes it on the way out, whatever happens.

  Raises:
    WorkdirError: another live run holds the lock (the message names its pid and host and how to clear it).
  """
  if jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  me = _this_process()
  (_acquire_remote if fileio.is_remote(workdir) else _acquire_local)(workdir, path, me)
  held = {'lock': me}
  guard = threading.Lock()
  stop = threading.Event()

  def beat():
    while not stop.wait(HEARTBEAT_SECS):
      with guard:
        if _read(path) != held['lock']:
          return  # Taken over (this process was stopped for long) or removed: it is not ours to refresh.
        renewed = {**held['lock'], 'heartbeat': time.time()}
        with contextlib.suppress(OSError):
          fileio.write_text(path, json.dumps(renewed))
          held['lock'] = renewed

  heart = threading.Thread(target=beat, name='run.lock heartbeat', daemon=True)
  heart.start()
  try:
    yield
  finally:
    stop.set()
    with guard:
      if _read(path) == held['lock']:
        with contextlib.suppress(OSError):
          epath.Path(path).unlink()
