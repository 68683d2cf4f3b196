"""The package is a house in layers: imports run downward only (import-linter), and no circles.

The layers contract is pyproject.toml's `[tool.importlinter]`; `lint-imports`
checks it here. A copy of the package with one upward import (a building
block importing the trainer) must break it, so the check is known to bite.
"""

import ast
import os
import shutil
import subprocess
import sys

import grimp
import pytest

from tests.helpers import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "wacnn_jax")
LAYERS = ("nn", "files", "models", "data", "training", "pretrained", "tools")


def lint_imports(root: str) -> subprocess.CompletedProcess:
  """`lint-imports` on the package and pyproject.toml in `root` (no cache)."""
  program = ("import sys; from importlinter.cli import lint_imports; "
             "sys.exit(lint_imports(no_cache=True, no_logo=True))")
  return subprocess.run([sys.executable, "-c", program], cwd=root, capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=root), check=False)


def test_the_layers_contract_is_kept():
  result = lint_imports(REPO_ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
  """A building block that imports the trainer is refused, naming the import."""
  shutil.copytree(PACKAGE, tmp_path / "wacnn_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "shipped"))
  shutil.copy(os.path.join(REPO_ROOT, "pyproject.toml"), tmp_path)
  layers = tmp_path / "wacnn_jax" / "nn" / "layers.py"
  layers.write_text(layers.read_text() + "\nfrom wacnn_jax.training import train  # upward\n")
  result = lint_imports(str(tmp_path))
  assert result.returncode != 0
  assert "BROKEN" in result.stdout
  assert "wacnn_jax.nn.layers -> wacnn_jax.training.train" in result.stdout


def _cycles(graph) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for imported in graph.find_modules_directly_imported_by(module):
      if imported not in index:
        visit(imported)
        low[module] = min(low[module], low[imported])
      elif imported in on_stack:
        low[module] = min(low[module], index[imported])
    if low[module] == index[module]:
      component = []
      while not component or component[-1] != module:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        cycles.append(sorted(component))

  for module in sorted(graph.modules):
    if module not in index:
      visit(module)
  return cycles


def test_no_module_imports_itself_in_a_circle():
  """Module by module, function-local imports included: no circle, inside a layer either."""
  assert _cycles(grimp.build_graph("wacnn_jax", cache_dir=None)) == []


def test_every_layer_says_what_it_is_and_what_it_may_import():
  for layer in LAYERS:
    with open(os.path.join(PACKAGE, layer, "__init__.py")) as f:
      doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and "import" in doc, layer


def _code_lines(path: str) -> int:
  with open(path) as f:
    return len(f.read().splitlines())


@pytest.mark.parametrize("folder", [".", *LAYERS, "models"])
def test_modules_stay_small(folder):
  """One idea per module: none over 450 lines; the command line only dispatches."""
  for name in sorted(os.listdir(os.path.join(PACKAGE, folder))):
    if name.endswith(".py"):
      assert _code_lines(os.path.join(PACKAGE, folder, name)) <= 450, f"{folder}/{name}"
  assert _code_lines(os.path.join(PACKAGE, "cli.py")) < 150


def test_train_and_evaluate_reads_as_a_table_of_contents():
  """At most 60 lines of code (docstring and comments aside)."""
  path = os.path.join(PACKAGE, "training", "train.py")
  with open(path) as f:
    source = f.read()
  function = next(node for node in ast.parse(source).body
                  if isinstance(node, ast.FunctionDef) and node.name == "train_and_evaluate")
  lines = source.splitlines()[function.body[0].end_lineno:function.end_lineno]
  assert sum(1 for line in lines if line.strip() and not line.strip().startswith("#")) <= 60
