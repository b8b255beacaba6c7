"""The rules docs/architecture.md states about imports, checked on the source:
no import cycles among bpfkit's modules (module level, where a cycle breaks an
import), the lab imports nothing of BPF (loader, pillars), the kernel/VM code
nothing of MPTCP, BPF or the lab, the loader nothing of the pillars, and
importing bpfkit.sched (the package) imports nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bpfkit.paths import PROJECT_ROOT

pytestmark = pytest.mark.unit


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((PROJECT_ROOT / "bpfkit").rglob("*.py")):
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], *, module_level: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if module_level else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules, module_level=True) for name, path in modules.items()}
    done: set[str] = set()

    def walk(name: str, trail: list[str]) -> None:
        if name in trail:
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(graph[name]):
            walk(target, trail + [name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])


@pytest.mark.parametrize("layer, forbidden", [
    ("bpfkit.lab", ("bpfkit.loader", "bpfkit.mptcpize", "bpfkit.subflow", "bpfkit.sched.lifecycle",
                    "bpfkit.sched.trace", "bpfkit.sched.scaffold", "bpfkit.kernel", "bpfkit.bench")),
    ("bpfkit.kernel", ("bpfkit.loader", "bpfkit.lab", "bpfkit.mptcpize", "bpfkit.subflow", "bpfkit.sched",
                       "bpfkit.mptcp_sockopt", "bpfkit.bench")),
    ("bpfkit.loader", ("bpfkit.mptcpize", "bpfkit.subflow", "bpfkit.sched", "bpfkit.lab", "bpfkit.kernel.kbuild",
                       "bpfkit.bench")),
    ("bpfkit.sched.registry", ("bpfkit.loader", "bpfkit.kernel", "bpfkit.lab")),
    # a pillar: nothing of another pillar
    ("bpfkit.mptcpize", ("bpfkit.subflow", "bpfkit.sched", "bpfkit.lab", "bpfkit.bench")),
    ("bpfkit.subflow", ("bpfkit.mptcpize", "bpfkit.sched", "bpfkit.lab", "bpfkit.bench")),
    ("bpfkit.sched", ("bpfkit.mptcpize", "bpfkit.subflow", "bpfkit.lab", "bpfkit.bench")),
])
def test_a_layer_imports_nothing_it_must_not(layer, forbidden):
    modules = _modules()
    for name, path in modules.items():
        if name == layer or name.startswith(layer + "."):
            bad = {t for t in _imports(name, path, modules, module_level=False)
                   if any(t == f or t.startswith(f + ".") for f in forbidden)}
            assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("package", ["bpfkit.sched", "bpfkit.mptcpize", "bpfkit.subflow"])
def test_a_pillar_package_imports_nothing_by_itself(package):
    modules = _modules()
    assert not _imports(package, modules[package], modules, module_level=False)
