"""The package layout is the architecture: imports go one way, from the apps down to the data.

Every ``import tgdfer...`` in every module (lazy ones inside functions included) must point at the same layer or a
lower one, so nothing below the trainer imports it, and the cache contract never imports stage 2. No module takes
part in an import cycle, not even through a lazy import; no module reaches into another one's ``_private`` names
(tests and benchmarks included: they use public seams); no function of the package runs past 80 lines.
"""

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import tgdfer

LAYERS = [
    ("tgdfer", "tgdfer.errors", "tgdfer.config", "tgdfer.labels", "tgdfer.atomic", "tgdfer.locks", "tgdfer.devices"),
    ("tgdfer.backbone", "tgdfer.data"),
    ("tgdfer.features",),
    ("tgdfer.model", "tgdfer.plots"),
    ("tgdfer.train", "tgdfer.extract"),
    ("tgdfer.sweep",),
    ("tgdfer.testing",),  # generated clips, datasets and caches for tests, benchmarks and the demo
    ("tgdfer.apps",),
    ("tgdfer.api",),  # the Python API gathers the layers below; tgdfer/__init__ reaches it lazily by name
    ("tgdfer.cli", "tgdfer.__main__"),
]
REPO = Path(tgdfer.__file__).parent.parent
CHECKED = ("tgdfer", "tests", "bench", "pipelines")  # every Python tree of the repository
MAX_FUNCTION_LINES = 80


def _layer(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def modules(root: Path, trees: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root/<tree>`` (a package's name is its __init__)."""
    found = {}
    for tree in trees:
        for path in sorted((root / tree).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@dataclass(frozen=True)
class Import:
    target: str  # the module imported (a submodule when ``from package import submodule``)
    name: str | None  # the name taken from it (``from target import name``); None for a whole module
    line: int


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import of a module of ``known`` in the file, wherever it stands (top level or inside a function)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [Import(a.name, None, node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    found.append(Import(f"{base}.{a.name}", None, node.lineno))
                elif base in known:
                    found.append(Import(base, a.name, node.lineno))
    return found


def missing_modules(module: str, path: Path, known: dict[str, Path]) -> list[str]:
    """Imports of a ``tgdfer`` module that does not exist (one moved or renamed), lazy ones included."""
    found = []
    for node in ast.walk(_tree(path)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        found += [
            f"{module}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "tgdfer" and n not in known
        ]
    return found


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` of a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def private_reach_ins(module: str, path: Path, known: dict[str, Path]) -> list[str]:
    """Where the file uses another module's ``_private`` name: ``from m import _x``, ``m._x`` on a module bound
    by an import, ``setattr/getattr(m, "_x")`` (monkeypatch's too), or a dotted string ``"tgdfer.m._x"``."""
    bound = {}  # local name -> module it stands for
    found = []
    for imp in imports(module, path, known):
        if imp.name is not None and _is_private(imp.name) and imp.target != module:
            found.append(f"{module}:{imp.line} imports {imp.target}.{imp.name}")
    tree = _tree(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if f"{node.module}.{a.name}" in known:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"

    def resolve(expr: ast.expr) -> str | None:
        dotted = _dotted(expr)
        if dotted is None or dotted.split(".")[0] not in bound:
            return None
        head, _, rest = dotted.partition(".")
        name = bound[head] + ("." + rest if rest else "")
        return name if name in known and name != module else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and resolve(node.value):
            found.append(f"{module}:{node.lineno} reaches {resolve(node.value)}.{node.attr}")
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            first, second = node.args[0], node.args[1]
            named = isinstance(second, ast.Constant) and isinstance(second.value, str) and _is_private(second.value)
            if named and resolve(first):
                found.append(f"{module}:{node.lineno} reaches {resolve(first)}.{second.value}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("tgdfer."):
            owner, _, attr = node.value.rpartition(".")
            if owner in known and owner != module and _is_private(attr):
                found.append(f"{module}:{node.lineno} reaches {node.value}")
    return sorted(found, key=lambda hit: int(hit.split(":")[1].split()[0]))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    return {name: {i.target for i in imports(name, path, known)} - {name} for name, path in known.items()}


def long_functions(known: dict[str, Path], limit: int) -> list[str]:
    found = []
    for name, path in known.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{name}:{node.lineno} {node.name} has {lines} lines")
    return found


def _package() -> dict[str, Path]:
    return modules(REPO, ("tgdfer",))


def test_every_import_points_down_or_sideways():
    known = _package()
    upward = []
    for name, path in known.items():
        for target in sorted({i.target for i in imports(name, path, known)}):
            if _layer(target) > _layer(name):
                upward.append(f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})")
    assert upward == []


def test_nothing_outside_training_and_sweeps_imports_the_trainer():
    known = _package()
    users = sorted(
        name
        for name, path in known.items()
        if {"tgdfer.train.engine", "tgdfer.train.folds"} & {i.target for i in imports(name, path, known)}
        and not name.startswith(("tgdfer.train", "tgdfer.sweep"))
    )
    assert users == ["tgdfer.api", "tgdfer.apps.demo", "tgdfer.cli"]  # fit(), the demo's model, the CLI's train


def test_every_import_of_the_package_names_a_module_that_exists():
    known = modules(REPO, CHECKED)
    assert [hit for name, path in known.items() for hit in missing_modules(name, path, known)] == []


def test_no_import_cycles_not_even_through_lazy_imports():
    assert cycles(import_graph(modules(REPO, CHECKED))) == []


def test_no_module_reaches_into_another_modules_private_names():
    known = modules(REPO, CHECKED)
    assert [hit for name, path in known.items() for hit in private_reach_ins(name, path, known)] == []


def test_no_function_in_the_package_is_longer_than_80_lines():
    assert long_functions(_package(), MAX_FUNCTION_LINES) == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """Each check finds its fault in a small made-up package, and passes what is allowed."""
    pkg = tmp_path / "tgdfer"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "sub/__init__.py": "from tgdfer.sub.a import A\n",
        "sub/a.py": "A = 1\n_hidden = 2\ndef f():\n    from tgdfer.sub import b  # lazy\n    return b\n",
        "sub/b.py": "from tgdfer.sub.a import _hidden\n",
        "c.py": "import tgdfer.sub.a as m\nimport tgdfer.sub.a\nfrom tgdfer.sub import a\n"
        "x = m._hidden + tgdfer.sub.a._hidden + a.__name__\ngetattr(a, '_hidden')\nP = 'tgdfer.sub.a._hidden'\n"
        "def long():\n" + "    pass\n" * 80,
        "d.py": "from tgdfer.sub.a import A\ndef short():\n" + "    pass\n" * 79,
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    known = modules(tmp_path, ("tgdfer",))
    assert cycles(import_graph(known)) == [["tgdfer.sub.a", "tgdfer.sub.b"]]
    assert private_reach_ins("tgdfer.sub.b", known["tgdfer.sub.b"], known) == [
        "tgdfer.sub.b:1 imports tgdfer.sub.a._hidden"
    ]
    assert sorted(private_reach_ins("tgdfer.c", known["tgdfer.c"], known)) == [
        "tgdfer.c:4 reaches tgdfer.sub.a._hidden",
        "tgdfer.c:4 reaches tgdfer.sub.a._hidden",
        "tgdfer.c:5 reaches tgdfer.sub.a._hidden",
        "tgdfer.c:6 reaches tgdfer.sub.a._hidden",
    ]
    assert private_reach_ins("tgdfer.sub.a", known["tgdfer.sub.a"], known) == []  # its own names are its own
    assert missing_modules("tgdfer.c", known["tgdfer.c"], known) == []
    (pkg / "e.py").write_text("def f():\n    from tgdfer.gone import x\n    import tgdfer.sub.gone\n")
    assert missing_modules("tgdfer.e", pkg / "e.py", known) == [
        "tgdfer.e:2 imports tgdfer.gone",
        "tgdfer.e:3 imports tgdfer.sub.gone",
    ]
    assert long_functions(known, MAX_FUNCTION_LINES) == ["tgdfer.c:7 long has 81 lines"]


def test_errors_and_cli_import_no_torch():
    for module in ("tgdfer/errors.py", "tgdfer/config.py", "tgdfer/cli.py"):
        tree = ast.parse((REPO / module).read_text())
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
        "lazy = {n for n in dir(tgdfer) if not n.startswith('_')}; "
        "import tgdfer.api as api; assert sorted(api.__all__) == sorted(lazy), lazy ^ set(api.__all__); "
        "assert all(getattr(tgdfer, n) is getattr(api, n) for n in api.__all__); print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    known = _package()
    assert imports("tgdfer", known["tgdfer"], known) == []  # no import statement: the layers stay one-way
