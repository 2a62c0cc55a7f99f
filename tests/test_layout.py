"""The code's shape: package modules import each other without a cycle, and never a stage script,
config.py or the lab (arrows point down: lab -> scripts' config.py and imdb_bert -> TensorFlow); the
package never opens results/."""

import pytest
import ast
import glob
import os

from conftest import ROOT

SCRIPTS = {os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "*.py"))}


def package_imports() -> dict[str, set[str]]:
    """Each imdb_bert module -> the names it imports (module level and inside functions alike)."""
    graph = {}
    for path in glob.glob(os.path.join(ROOT, "imdb_bert", "*.py")):
        name = os.path.basename(path)[:-3]
        imported = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and node.module == "imdb_bert":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imdb_bert."):
                imported.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[0])
            elif isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
        graph[name] = imported
    return graph


def test_package_modules_import_no_script_and_no_cycle():
    graph = package_imports()
    assert {"pipeline", "model", "pretraining", "private_apis"} <= set(graph)
    for module, imported in graph.items():
        assert not imported & (SCRIPTS | {"lab"}), (module, imported & (SCRIPTS | {"lab"}))   # config.py included
    edges = {module: {name for name in imported if name in graph} for module, imported in graph.items()}
    visiting, done = [], set()

    def visit(module):
        assert module not in visiting, " -> ".join(visiting[visiting.index(module):] + [module])
        if module in done:
            return
        visiting.append(module)
        for dependency in edges[module]:
            visit(dependency)
        visiting.pop()
        done.add(module)

    for module in edges:
        visit(module)


def test_the_product_never_imports_the_lab_and_the_package_never_names_results():
    for path in glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "imdb_bert", "*.py")):
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "lab", path
            elif isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "lab" for alias in node.names), path
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and os.sep + "imdb_bert" + os.sep in path
                  and (node.value == "results" or "results/" in node.value)):
                raise AssertionError(f"{path} names results/ ({node.value!r}): pass the path in from the caller")
    lab_imports = set()
    for path in glob.glob(os.path.join(ROOT, "lab", "*.py")):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and node.module:
                lab_imports.add(node.module.split(".")[0])
    assert {"imdb_bert", "lab"} <= lab_imports   # the lab does import the product


def test_private_library_apis_are_used_in_one_module_only():
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True):
        if path.endswith(os.path.join("imdb_bert", "private_apis.py")) or os.sep + "tests" + os.sep in path:
            continue
        text = open(path, encoding="utf-8").read()
        for private in ("tensorflow_text.python", "tensorflow_text.tools", "_symbolic_build", "keras.src"):
            assert private not in text, (path, private)


@pytest.mark.slow
def test_the_docs_study_tables_are_rendered_from_the_results_csvs():
    """lab/render.py --check fails when a table in docs/ is not what results/*.csv give (typed by hand,
    or a CSV changed without rerendering)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, os.path.join(ROOT, "lab", "render.py"), "--check"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_every_error_message_names_only_flags_that_exist():
    """A one-line error that tells the user to pass a flag names a flag some command has (each
    command's --help lists them): "pass --run FOLDER" once stood in a message of evaluate.py, which has none."""
    import re
    import subprocess
    import sys

    flags = set()
    commands = [path for path in glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "lab", "*.py"))
                if not path.endswith("__init__.py")]
    for path in commands:
        result = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
        assert result.returncode == 0, (path, result.stderr[-2000:])
        flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.stdout))
    assert {"--run", "--force", "--set", "--preset", "--compare", "--pays"} <= flags
    named = {}
    for path in commands + glob.glob(os.path.join(ROOT, "imdb_bert", "*.py")):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", part.value):
                        named.setdefault(flag, set()).add(os.path.relpath(path, ROOT))
    assert named, "no error message names a flag: the search is broken"
    unknown = {flag: sorted(where) for flag, where in named.items() if flag not in flags}
    assert not unknown, unknown
