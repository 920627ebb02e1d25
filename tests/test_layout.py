"""The package layout is the architecture: imports go one way, from the apps down to the data.

Every ``import tgdfer...`` in every module (lazy ones inside functions included) must point at the same layer or a
lower one, so nothing below the trainer imports it, and the cache contract never imports stage 2.
"""

import ast
from pathlib import Path

import tgdfer

LAYERS = [
    ("tgdfer", "tgdfer.errors", "tgdfer.config", "tgdfer.labels", "tgdfer.atomic", "tgdfer.locks", "tgdfer.devices"),
    ("tgdfer.backbone", "tgdfer.data"),
    ("tgdfer.features",),
    ("tgdfer.model", "tgdfer.plots"),
    ("tgdfer.train", "tgdfer.extract"),
    ("tgdfer.sweep",),
    ("tgdfer.apps", "tgdfer.testing"),  # testing: fixture generators, which nothing in tgdfer imports
    ("tgdfer.api",),  # the Python API gathers the layers below; tgdfer/__init__ reaches it lazily by name
    ("tgdfer.cli", "tgdfer.__main__"),
]


def _layer(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def _modules() -> dict[str, Path]:
    root = Path(tgdfer.__file__).parent
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tgdfer"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("tgdfer")}
    return names


def test_every_import_points_down_or_sideways():
    upward = []
    for name, path in sorted(_modules().items()):
        for target in sorted(_imports(path)):
            if _layer(target) > _layer(name):
                upward.append(f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})")
    assert upward == []


def test_nothing_outside_training_and_sweeps_imports_the_trainer():
    users = sorted(
        name
        for name, path in _modules().items()
        if "tgdfer.train.engine" in _imports(path) and not name.startswith(("tgdfer.train", "tgdfer.sweep"))
    )
    assert users == ["tgdfer.api", "tgdfer.apps.demo", "tgdfer.cli"]  # fit(), the demo's model, the CLI's train


def test_errors_and_cli_import_no_torch():
    for module in ("tgdfer/errors.py", "tgdfer/config.py", "tgdfer/cli.py"):
        tree = ast.parse((Path(tgdfer.__file__).parent.parent / module).read_text())
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in top if m.split(".")[0] in ("torch", "numpy", "h5py", "cv2")}, (module, top)


def test_import_tgdfer_is_instant_and_its_api_names_resolve_lazily():
    """``import tgdfer`` loads no torch; each API name comes from tgdfer.api on first use, and every one of its
    exports is reachable so (the package's one upward reference, by name rather than an import statement)."""
    import subprocess
    import sys

    code = (
        "import sys, tgdfer; assert 'torch' not in sys.modules and 'tgdfer.api' not in sys.modules; "
        "import tgdfer.api as api; assert sorted(api.__all__) == sorted(tgdfer._API), tgdfer._API ^ set(api.__all__); "
        "assert all(getattr(tgdfer, n) is getattr(api, n) for n in api.__all__); "
        "assert set(api.__all__) <= set(dir(tgdfer)); print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    root = Path(tgdfer.__file__).parent
    assert _imports(root / "__init__.py") == set()  # no import statement: the layers stay one-way
