"""README.md, docs/*.md and benchmarks/README.md: every relative link and #anchor resolves, and every `--config.KEY` they name exists.

Anchors are the ones GitHub makes from headings (lower case, punctuation dropped, spaces as hyphens, `-1`, `-2`
for repeats). Keys are checked against `configs/default.py`, flattened to dotted keys as `config_files` does, so a
command copied from the docs is never refused for an unknown key. Pure Python: no JAX.
"""

import json
import pathlib
import re

import pytest

from configs import default
from rmdnet_jax.run import config_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', ROOT / 'benchmarks' / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
FENCE = re.compile(r'^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$', re.M | re.S)
INLINE_CODE = re.compile(r'`[^`\n]*`')
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$', re.M)
HTML_ANCHOR = re.compile(r'<a\s+(?:name|id)="([^"]+)"', re.I)
CONFIG_KEY = re.compile(r'--config\.([A-Za-z_][\w.]*\w)')


def prose(text: str) -> str:
  """The text without fenced code blocks and inline code, where link syntax is only text."""
  return INLINE_CODE.sub('', FENCE.sub('', text))


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading: its text (links and markup dropped), lower case, every character that is
  not a letter, digit, `_`, `-` or space dropped, spaces as hyphens."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link: its text
  text = re.sub(r'<[^>]+>', '', text)  # inline HTML
  text = re.sub(r'(\*+|(?<!\w)_+|_+(?!\w))', '', text)  # emphasis markers (not the _ inside names)
  return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


def anchors(path: pathlib.Path) -> set:
  """The #anchors of a Markdown file: its headings' slugs (repeats numbered) and explicit <a name/id>."""
  text = FENCE.sub('', path.read_text())
  seen, out = {}, set()
  for heading in HEADING.findall(text):
    slug = github_slug(heading)
    out.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
    seen[slug] = seen.get(slug, 0) + 1
  return out | set(HTML_ANCHOR.findall(text))


def links(path: pathlib.Path) -> list:
  return [target for target in LINK.findall(prose(path.read_text())) if not re.match(r'[a-z][a-z0-9+.-]*:', target)]


def placeholder(key: str) -> bool:
  """`--config.KEY=VALUE` in the text stands for any key."""
  return key.isupper()


def default_keys() -> set:
  return set(config_files.flatten(json.loads(default.get_config().to_json_best_effort())))


def test_the_docs_exist_and_the_readme_stays_short():
  assert len(PAGES) > 5
  assert len((ROOT / 'README.md').read_text().splitlines()) <= 200


def test_github_slugs():
  assert github_slug('What a run writes (`--workdir`)') == 'what-a-run-writes---workdir'
  assert github_slug('The first CPU study (results/cpu_study)') == 'the-first-cpu-study-resultscpu_study'
  assert github_slug('CIFAR-N (real human noise)') == 'cifar-n-real-human-noise'
  assert github_slug('Many GPU nodes, SLURM, and two processes on one CPU') == (
      'many-gpu-nodes-slurm-and-two-processes-on-one-cpu'
  )
  assert github_slug('**Bold** and [a link](x.md)') == 'bold-and-a-link'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
  broken = []
  for target in links(page):
    path, _, anchor = target.partition('#')
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
      broken.append(f'{target}: no {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}')
    elif anchor and file.suffix == '.md' and anchor not in anchors(file):
      broken.append(f'{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}')
  assert not broken, f'{page.relative_to(ROOT)}: ' + '; '.join(broken)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_key_exists(page):
  keys = default_keys()
  unknown = sorted({key for key in CONFIG_KEY.findall(page.read_text()) if key not in keys and not placeholder(key)})
  assert not unknown, f'{page.relative_to(ROOT)} names keys configs/default.py does not have: {unknown}'


def test_the_checks_catch_a_broken_link_a_missing_anchor_and_an_unknown_key(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text(
      '# Title\n\n## A section\n\n[ok](#a-section) [bad](#nowhere) [gone](missing.md) `[code](not/a/link.md)`\n\n'
      '```bash\n# not a heading\n[x](also/not/a/link.md)\n```\n\n`--config.relation.K=2 --config.relation.kay=2`\n'
  )
  assert links(page) == ['#a-section', '#nowhere', 'missing.md']
  assert anchors(page) == {'title', 'a-section'}
  assert set(CONFIG_KEY.findall(page.read_text())) - default_keys() == {'relation.kay'}
  assert placeholder('KEY') and not placeholder('relation.K')
