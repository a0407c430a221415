"""The direction of imports: nn imports numpy and the standard library only (numba, in the
compiled kernel alone), never the service, the worker or their libraries."""
import ast
import pathlib
import subprocess
import sys

NN = pathlib.Path(__file__).resolve().parents[2] / "nn"


def test_nn_imports_only_numpy_and_the_standard_library():
    for path in NN.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                allowed = root == "numpy" or root in sys.stdlib_module_names or (
                    root == "numba" and path == NN / "engines" / "kernel.py")
                assert allowed, (path, root)


def test_importing_nn_loads_no_service_libraries():
    code = ("import sys, nn; bad = [m for m in sys.modules if m.split('.')[0] in "
            "{'flask', 'sqlalchemy', 'celery', 'redis', 'scipy', 'service', 'worker', "
            "'numba'}]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=NN.parent, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
