"""The code's shape: package modules import each other without a cycle, and never a stage script or
config.py (arrows point down: scripts -> imdb_bert -> TensorFlow)."""

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
        assert not imported & SCRIPTS, (module, imported & SCRIPTS)   # config.py and the stage scripts included
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


def test_private_library_apis_are_used_in_one_module_only():
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True):
        if path.endswith(os.path.join("imdb_bert", "private_apis.py")) or os.sep + "tests" + os.sep in path:
            continue
        text = open(path, encoding="utf-8").read()
        for private in ("tensorflow_text.python", "tensorflow_text.tools", "_symbolic_build", "keras.src"):
            assert private not in text, (path, private)


def test_the_docs_study_tables_are_rendered_from_the_results_csvs():
    """docs/render.py --check fails when a table in docs/ is not what results/*.csv give (typed by hand,
    or a CSV changed without rerendering)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "render.py"), "--check"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_every_error_message_names_only_flags_that_exist():
    """A one-line error that tells the user to pass a flag names a flag some command has (each
    command's --help lists them): "pass --run FOLDER" once stood in a message of evaluate.py, which has none."""
    import re
    import subprocess
    import sys

    flags = set()
    for path in glob.glob(os.path.join(ROOT, "*.py")):
        result = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
        assert result.returncode == 0, (path, result.stderr[-2000:])
        flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.stdout))
    assert {"--run", "--force", "--set", "--preset", "--compare", "--pays"} <= flags
    named = {}
    for path in glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "imdb_bert", "*.py")):
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
