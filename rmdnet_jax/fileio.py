"""The run's small files (config.json, noisy_labels.npz, metrics.jsonl, results.json) on local disk or in a
bucket (`gs://...`, where Orbax also writes the checkpoints), each written so that a reader never sees half a file.
"""
import os

from etils import epath


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
