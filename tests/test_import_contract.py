"""The package graph is layered, and this test keeps it so: a module may import its own layer or a lower one,
never a higher one, whether the import sits at the top of the file or inside a function.

Layers, lowest first (a module belongs to the layer of the longest prefix that names it):
- leaves: errors, paths, the pydantic base, the bounded YAML reader every user file goes through
  (config.yamlsafe), and the policy-effect protocol the twin defines (twin.effects);
- model and topology: architectures, operators, fabric graphs;
- spec: composition and validation (config), and the spec pieces it assembles (twin.hardware, executor.spec,
  sim.spec, the policy registry that validates presets);
- twin: the cost model, blocks, steps, predictions (it sees plans only through their attributes);
- planner: deployment -> plan (it uses the twin's expert-load model);
- policy: the policies, which implement the effect protocol and may run the twin for their what-if tables;
- drivers: validation, the simulator, the search, the executor, the engine launch export/import;
- store, then tui, then cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "cmtwin"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("cmtwin", "cmtwin.errors", "cmtwin.paths", "cmtwin.config.base", "cmtwin.config.yamlsafe",
                "cmtwin.twin.effects")),
    ("model/topology", ("cmtwin.model", "cmtwin.topology")),
    ("spec", ("cmtwin.config", "cmtwin.twin.hardware", "cmtwin.executor.spec", "cmtwin.sim.spec",
              "cmtwin.policy.registry")),
    ("twin", ("cmtwin.twin",)),
    ("planner", ("cmtwin.planner",)),
    ("policy", ("cmtwin.policy",)),
    ("drivers", ("cmtwin.validation", "cmtwin.sim", "cmtwin.search", "cmtwin.executor", "cmtwin.launch")),
    ("store", ("cmtwin.store",)),
    ("tui", ("cmtwin.tui",)),
    ("cli", ("cmtwin.cli",)),
]


def layer_of(module: str) -> int:
    """Index of the layer whose longest prefix names `module` (a package's __init__ counts as the package)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def imported_modules(module: str, source: str) -> list[tuple[int, str]]:
    """(line, cmtwin module) for every import in the source, function-local ones included."""
    package = module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from cmtwin.twin import step` imports cmtwin.twin.step: count the submodule when it is one
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                            or (ROOT.parent / sub.replace(".", "/")).is_dir() else base))
    return [(line, m) for line, m in out if m == "cmtwin" or m.startswith("cmtwin.")]


def upward_imports(modules: dict[str, str]) -> list[str]:
    """Every import of a higher layer, as 'module:line imports target (layer -> layer)'."""
    bad = []
    for module, source in sorted(modules.items()):
        mine = layer_of(module)
        for line, target in imported_modules(module, source):
            theirs = layer_of(target)
            if theirs > mine:
                bad.append(f"{module}:{line} imports {target} ({LAYERS[mine][0]} -> {LAYERS[theirs][0]})")
    return bad


def package_modules() -> dict[str, str]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path.read_text(encoding="utf-8")
    return out


def test_no_module_imports_a_higher_layer():
    bad = upward_imports(package_modules())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_a_planted_upward_import_fails_even_inside_a_function():
    modules = package_modules()
    modules["cmtwin.twin.cost"] += "\n\ndef _planted():\n    from cmtwin.planner.plan import compile_plan\n"
    modules["cmtwin.model.operators"] += "\nimport cmtwin.cli.main\n"
    bad = upward_imports(modules)
    assert any(b.startswith("cmtwin.twin.cost:") and "cmtwin.planner.plan (twin -> planner)" in b for b in bad)
    assert any(b.startswith("cmtwin.model.operators:") and "(model/topology -> cli)" in b for b in bad)


def test_every_module_has_a_layer():
    for module in package_modules():
        layer_of(module)
