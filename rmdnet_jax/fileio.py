"""The run's small files (config.json, noisy_labels.npz, metrics.jsonl, results.json) on local disk or in a
bucket (`gs://...`, where Orbax also writes the checkpoints), each written so that a reader never sees half a file
(metrics.jsonl, appended line by line on a local disk, at worst ends in a torn line that its writer drops).
"""

import os

# gs:// paths (these files, Orbax's checkpoints, tfds' data_dir) go through etils.epath. epath would use
# TensorFlow's gfile whenever TensorFlow is installed (e.g. for prepare_data), which imports TensorFlow into the
# training process; this sends them through fsspec + gcsfs (pinned in requirements.txt) either way.
# EPATH_USE_TF=1 in the environment restores epath's default.
os.environ.setdefault('EPATH_USE_TF', 'false')

from etils import epath  # noqa: E402


def is_remote(path) -> bool:
  return '://' in os.fspath(path)


def absolute(path) -> str:
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def exists(path) -> bool:
  return epath.Path(path).exists()


def read_bytes(path) -> bytes:
  return epath.Path(path).read_bytes()


def read_text(path) -> str:
  return epath.Path(path).read_text()


def write_bytes(path, data: bytes) -> None:
  """Writes `data` to `path` atomically, creating the parent directory."""
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    target.write_bytes(data)  # An object store replaces an object in one step on upload.
    return
  temporary = target.parent / f'.{target.name}.tmp'
  temporary.write_bytes(data)
  os.replace(temporary, target)  # Local disks need write-then-rename for the same guarantee.


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def append_text(path, text: str) -> None:
  """Appends `text` to a local file with one O_APPEND write, creating the file and its directory.

  Object stores cannot append to an object: for a `gs://` path rewrite the whole file with `write_text`.
  """
  if is_remote(path):
    raise ValueError(f'{path} is in an object store, which cannot append; rewrite it with write_text.')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a', encoding='utf-8') as f:
    f.write(text)


def drop_torn_last_line(path) -> None:
  """Cuts a local text file after its last newline: what a crash in the middle of an append leaves behind."""
  if is_remote(path) or not os.path.isfile(path):
    return
  with open(path, 'rb+') as f:
    text = f.read()
    if text and not text.endswith(b'\n'):
      f.truncate(text.rfind(b'\n') + 1)  # rfind is -1 when the only line is torn: then the file is emptied.
