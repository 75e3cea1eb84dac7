"""The config files of `configs/`, from a source checkout or from the installed package.

The wheel ships `configs/*.py` as `rmdnet_jax/configs/` (no top-level `configs` package lands in site-packages;
the configs import `default` from either place). `--config=configs/tiny.py` names the file in the current
directory when there is one, as always; otherwise the same file of the installed package (or of the source tree
this `rmdnet_jax` was imported from), so the README's config paths work from any directory.
"""

import os
import sys
from typing import Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
# Where `configs/NAME.py` may live besides the current directory: in the wheel, then in a source checkout.
SEARCH_DIRS = (os.path.join(_HERE, 'configs'), os.path.join(os.path.dirname(_HERE), 'configs'))


def packaged_path(name: str) -> str:
  """The installed (or source-tree) path of config `name` ('tiny' or 'tiny.py'); FileNotFoundError if none."""
  name = name if name.endswith('.py') else name + '.py'
  for directory in SEARCH_DIRS:
    candidate = os.path.join(directory, name)
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f'No config {name} in {" or ".join(SEARCH_DIRS)}.')


def resolve(spec: str) -> str:
  """`configs/NAME.py[:params]` -> the packaged file when ./configs/NAME.py does not exist; anything else as is."""
  path, colon, params = spec.partition(':')
  if os.path.exists(path) or os.path.isabs(path):
    return spec
  parts = os.path.normpath(path).split(os.sep)
  if len(parts) != 2 or parts[0] != 'configs':
    return spec
  try:
    return packaged_path(parts[1]) + colon + params
  except FileNotFoundError:
    return spec  # config_flags then names the missing file


def resolve_argv(argv: Sequence[str], flag: str = 'config') -> list:
  """`argv` with the value of `--config=...` (or `--config ...`) resolved."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(f'--{flag}='):
      out[i] = f'--{flag}=' + resolve(arg[len(flag) + 3 :])
    elif arg == f'--{flag}' and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out


def resolve_sys_argv(flag: str = 'config') -> None:
  sys.argv[:] = resolve_argv(sys.argv, flag)
