"""Every notebook in experiments/ runs top to bottom, offline, with its smoke setting
(papermill injects `smoke=True` and paths after the cell tagged `parameters`). A notebook
that raises fails here, naming the cell."""

import json
import os

import nbformat
import papermill
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, 'experiments')


def _run(name, tmp_path, **parameters):
  out = str(tmp_path / f'{name}.out.ipynb')
  papermill.execute_notebook(os.path.join(NOTEBOOKS, f'{name}.ipynb'), out,
                             parameters={'smoke': True, **parameters}, cwd=REPO,
                             kernel_name='python3', progress_bar=False)
  return nbformat.read(out, as_version=4)


def _text(notebook):
  """Everything the notebook printed."""
  return ''.join(o.get('text', '') for cell in notebook.cells if cell.cell_type == 'code'
                 for o in cell.get('outputs', []))


@pytest.fixture(autouse=True)
def _one_device(monkeypatch):
  # The kernels inherit the environment: one CPU device compiles faster than the suite's 8.
  monkeypatch.delenv('XLA_FLAGS', raising=False)


def test_every_notebook_is_tested_and_stored_without_outputs():
  names = sorted(f[:-len('.ipynb')] for f in os.listdir(NOTEBOOKS) if f.endswith('.ipynb'))
  assert names == ['ilsvrc_tpu', 'quickstart', 'wsol_cub', 'your_images']
  for name in names:
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == 'code']
    assert all(not c.outputs and c.execution_count is None for c in code), name
    tagged = [c for c in code if 'parameters' in c.metadata.get('tags', [])]
    assert len(tagged) == 1 and 'smoke = False' in tagged[0].source, name
    assert 'Written for:' in notebook.cells[0].source, name


@pytest.fixture(scope='module')
def quickstart_workdir(tiny_data_dir, tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('quickstart')
  workdir = str(tmp_path / 'run')
  notebook = _run('quickstart', tmp_path, workdir=workdir, data_dir=tiny_data_dir)
  assert 'classification top-1 error' in _text(notebook)
  return workdir


def test_quickstart(quickstart_workdir):
  with open(os.path.join(quickstart_workdir, 'eval.json')) as f:
    assert 0 <= json.load(f)['gt_known_loc_accuracy'] <= 1


def test_your_images(quickstart_workdir, tmp_path):
  notebook = _run('your_images', tmp_path, checkpoint=quickstart_workdir)
  assert _text(notebook).count('box [') == 3 * 4  # 3 images; the tiny set has 4 classes


def test_ilsvrc_tpu(tmp_path):
  workdir = str(tmp_path / 'run')
  notebook = _run('ilsvrc_tpu', tmp_path, manual_dir=str(tmp_path / 'manual'),
                  data_dir=str(tmp_path / 'tfds'), workdir=workdir)
  text = _text(notebook)
  assert 'loc_top5_error_heuristic' in text and 'max_box_acc_v2' in text
  with open(os.path.join(workdir, 'eval.json')) as f:
    results = json.load(f)
  assert 'official/loc_top1_error' in results and 'wsol/max_box_acc_v2' in results


def test_wsol_cub(tmp_path):
  workdir = str(tmp_path / 'run')
  notebook = _run('wsol_cub', tmp_path, manual_dir=str(tmp_path / 'manual'),
                  data_dir=str(tmp_path / 'tfds'), workdir=workdir)
  assert 'max_box_acc_v2' in _text(notebook)
  assert os.path.exists(os.path.join(workdir, 'figures', 'wsol_box_acc.png'))
