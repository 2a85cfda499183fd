"""The package's two layers, read from the source (AST; nothing is imported).

* the core (engine, ops, kernels, emulator, layers, networks, optimizers, ``ig.save/ig.load``) never
  imports the application (``igc_np/app/``) nor the old paths that re-export it (the shims);
* no project module is imported inside a function (optional third-party packages such as cupy,
  mpi4py, PIL, matplotlib or tqdm may be: they are not always installed);
* no two project modules import each other, directly or around a circle.

Each failure lists every offending import as ``file:line``. Run ``python tests/test_layering.py`` for
the same lists and the import graph's size.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "igc_np"

# the old module paths, now ``from .app.X import ...`` re-exports (and training's split)
SHIMS = {f"igc_np.{m}" for m in ("data", "training", "imagenet", "mxnet_io", "mxnet_graph",
                                 "distributed")}
# application modules outside igc_np/app/: the command line of the package
APPLICATION_ENTRY = {"igc_np.__main__"}
# the one place a project module is imported by name at run time, and why: ``ig.data``,
# ``ig.training``, ... resolve on first use (PEP 562) so that ``import igc_np`` loads the core alone
DYNAMIC_IMPORT_ALLOWED = {("igc_np", "__getattr__")}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules():
    """{module name: path} of every .py file of the package."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


class _Imports(ast.NodeVisitor):
    """Every import statement of one file: (target module, line, enclosing function or None)."""

    def __init__(self, name, is_package, known):
        self.name, self.is_package, self.known = name, is_package, known
        self.found, self.dynamic, self.function = [], [], None

    def _base(self, level):
        parts = self.name.split(".")
        if not self.is_package:
            parts = parts[:-1]  # a module's package
        return ".".join(parts[:len(parts) - (level - 1)] if level > 1 else parts)

    def _add(self, target, node):
        if target == "igc_np" or target.startswith("igc_np."):
            self.found.append((target, node.lineno, self.function))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self._base(node.level)
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        for alias in node.names:  # ``from . import backend`` imports the module igc_np.backend
            sub = f"{module}.{alias.name}"
            self._add(sub if sub in self.known else module, node)

    def visit_Call(self, node):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if name in ("import_module", "__import__"):
            self.dynamic.append((node.lineno, self.function))
        self.generic_visit(node)

    def _scope(self, node):
        outer, self.function = self.function, self.function or node.name
        self.generic_visit(node)
        self.function = outer

    visit_FunctionDef = visit_AsyncFunctionDef = _scope

    def visit_Lambda(self, node):
        outer, self.function = self.function, self.function or "<lambda>"
        self.generic_visit(node)
        self.function = outer


def imports():
    """{module: _Imports} for every module of the package."""
    known = modules()
    result = {}
    for name, path in known.items():
        v = _Imports(name, path.name == "__init__.py", known)
        v.visit(ast.parse(path.read_text(), str(path)))
        result[name] = v
    return result


def where(name, line):
    return f"{modules()[name].relative_to(ROOT)}:{line}"


def is_shim(name):
    """An old path (``igc_np.data``) or a file of its package (``igc_np.data.__main__``)."""
    return name in SHIMS or any(name.startswith(shim + ".") for shim in SHIMS)


def is_application(name):
    return name == "igc_np.app" or name.startswith("igc_np.app.") or is_shim(name) \
        or name in APPLICATION_ENTRY


def imports_inside_functions(found=None):
    """'file:line: module imports X inside f()' for every project import inside a function."""
    found = found or imports()
    out = []
    for name, v in found.items():
        for target, line, function in v.found:
            if function is not None:
                out.append(f"{where(name, line)}: imports {target} inside {function}()")
        for line, function in v.dynamic:
            if (name, function) not in DYNAMIC_IMPORT_ALLOWED:
                out.append(f"{where(name, line)}: imports a module by name at run time"
                           f"{f' inside {function}()' if function else ''}")
    return out


def core_importing_the_application(found=None):
    found = found or imports()
    return [f"{where(name, line)}: the core module {name} imports {target}"
            for name, v in found.items() if not is_application(name)
            for target, line, _ in v.found if is_application(target)]


def application_importing_a_shim(found=None):
    """The application imports its modules by their new paths (igc_np.app.X), not the shims."""
    found = found or imports()
    return [f"{where(name, line)}: {name} imports the old path {target}"
            for name, v in found.items() if is_application(name) and not is_shim(name)
            for target, line, _ in v.found if is_shim(target)]


def cycles(found=None):
    """Every circle of imports (module level or inside functions), as 'a -> b (file:line) -> ...'."""
    found = found or imports()
    edges = {}
    for name, v in found.items():
        for target, line, _ in v.found:
            if target in found and target != name:
                edges.setdefault(name, {}).setdefault(target, line)
    out, seen = [], set()
    for component in _strongly_connected(found, edges):
        if len(component) < 2:
            continue
        # one circle through the component, found by a walk inside it, for the message
        start = min(component)
        path, node = [start], start
        while True:
            node = min(t for t in edges[node] if t in component and (t not in path or t == start))
            if node == start or node in path:
                break
            path.append(node)
        text = " -> ".join(f"{a} ({where(a, edges[a][b])})" for a, b in zip(path, path[1:] + [start]))
        key = frozenset(component)
        if key not in seen:
            seen.add(key)
            out.append(f"{text} -> {start}   [component: {', '.join(sorted(component))}]")
    return out


def _strongly_connected(nodes, edges):
    """Tarjan's algorithm (iterative): the strongly connected components of the import graph."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result


# ---- the checker checks itself on small sources ---------------------------------------------------
def _visit(source, name="igc_np.ops.conv", is_package=False):
    known = {"igc_np", "igc_np.ops", "igc_np.ops.conv", "igc_np.ops.checks", "igc_np.kernels",
             "igc_np.kernels.ops", "igc_np.backend", "igc_np.app", "igc_np.app.data"}
    v = _Imports(name, is_package, known)
    v.visit(ast.parse(source))
    return v


def test_the_checker_resolves_relative_imports_and_sees_function_scopes():
    v = _visit("from ..kernels import ops as k\nfrom .checks import pair\nfrom .. import backend\n"
               "import numpy\ndef f():\n    from ..app import data\n    import cupy\n"
               "g = lambda: __import__('x')\n")
    assert v.found == [("igc_np.kernels.ops", 1, None), ("igc_np.ops.checks", 2, None),
                       ("igc_np.backend", 3, None), ("igc_np.app.data", 6, "f")]
    assert v.dynamic == [(8, "<lambda>")]
    pkg = _visit("from . import conv\nfrom .checks import pair\n", "igc_np.ops", is_package=True)
    assert pkg.found == [("igc_np.ops.conv", 1, None), ("igc_np.ops.checks", 2, None)]


def test_the_checker_finds_a_circle():
    a, b, c = (_visit("", n) for n in ("igc_np.a", "igc_np.b", "igc_np.c"))
    a.found, b.found, c.found = [("igc_np.b", 1, None)], [("igc_np.c", 2, "f")], [("igc_np.a", 3, None)]
    components = _strongly_connected(["igc_np.a", "igc_np.b", "igc_np.c"],
                                     {"igc_np.a": {"igc_np.b": 1}, "igc_np.b": {"igc_np.c": 2},
                                      "igc_np.c": {"igc_np.a": 3}})
    assert [sorted(c) for c in components] == [["igc_np.a", "igc_np.b", "igc_np.c"]]
    assert _strongly_connected(["igc_np.a", "igc_np.b"], {"igc_np.a": {"igc_np.b": 1}}) == \
        [{"igc_np.b"}, {"igc_np.a"}]


# ---- the package ----------------------------------------------------------------------------------
def test_the_application_and_its_shims_are_where_the_layering_expects_them():
    names = modules()
    assert SHIMS <= set(names), SHIMS - set(names)
    assert {"igc_np.app", "igc_np.app.run", "igc_np.app.checkpoint", "igc_np.autograd",
            "igc_np.nets"} <= set(names)


def test_no_project_module_is_imported_inside_a_function():
    found = imports_inside_functions()
    assert not found, "imports inside functions (move them to the top of the file):\n  " + \
        "\n  ".join(found)


def test_the_core_never_imports_the_application():
    found = core_importing_the_application()
    assert not found, "the core imports the application (igc_np/app/ or an old path " \
        "re-exporting it):\n  " + "\n  ".join(found)


def test_the_application_imports_its_modules_by_their_new_paths():
    found = application_importing_a_shim()
    assert not found, "\n  ".join(found)


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles:\n  " + "\n  ".join(found)


if __name__ == "__main__":
    found = imports()
    print(f"{len(found)} modules, {sum(len(v.found) for v in found.values())} project imports")
    for title, lines in (("inside functions", imports_inside_functions(found)),
                         ("core -> application", core_importing_the_application(found)),
                         ("application -> old paths", application_importing_a_shim(found)),
                         ("cycles", cycles(found))):
        print(f"{title}: {len(lines)}")
        for line in lines:
            print("  " + line)
