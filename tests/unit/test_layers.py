"""The dependency rules of the package (serving/__init__.py): the request path's pure layers import no
Ray, grpc, FastAPI or torch; the folders import each other only downward, at module level and inside
functions alike; no module-level import cycle."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "serving"

# Imported in a fresh interpreter: none of HEAVY may come with them.
PURE = [
    "serving.core.walk",
    "serving.core.attempt",
    "serving.core.speculative",
    "serving.core.decide",
    "serving.core.request",
    "serving.core.types",
    "serving.core.errors",
    "serving.core.receipt",
    "serving.core.breaker",
    "serving.deferral",
    "serving.deferral.rules",
    "serving.deferral.incremental",
    "serving.deferral.posthoc",
    "serving.deferral.controller",
    "serving.deferral.load_aware",
    "serving.engines",
    "serving.engines.base",
    "serving.engines.continuous",
    "serving.engines.static",
    "serving.engines.vllm_engine",
    "serving.config",
    "serving.config.schema",
    "serving.config.loading",
    "serving.fronts.grpc_api",
    "serving.fronts.openai_api",
    "serving.fronts.status",
    "serving.fronts.outcome",
    "serving.fronts.openai_protocol",
    "serving.fronts.service",
    "serving.fronts.http",
    "serving.observability.metrics",
    "serving.observability.shadow",
    "serving.observability.status",
    "serving.evaluation.curves",
    "serving.evaluation.fit",
    "serving.evaluation.thresholds",
    "serving.evaluation.quality",
    "serving.evaluation.shadow_data",
    "serving.serve.autoscaling",
]
# modules at the package's root that every folder may import: they import nothing from serving
LEAVES = {"_proto", "compat"}
HEAVY = ["ray", "torch", "transformers", "vllm", "fastapi", "starlette", "grpc"]

# folder -> the folders its modules may import, at module level or inside a function (besides itself and LEAVES)
ALLOWED = {
    "core": {"deferral"},
    "deferral": set(),
    "engines": {"core", "deferral"},  # the token-level rules a strong pass applies (verify_block)
    "config": {"engines", "core", "deferral"},
    "fronts": {"core"},
    "observability": {"core", "evaluation", "deferral"},
    "evaluation": {"core", "deferral", "config", "tasks", "engines"},
    "tasks": set(),
    "serve": {"core", "deferral", "engines", "config", "fronts", "observability", "evaluation"},
    "ops": {"core", "deferral", "engines", "config", "fronts", "observability", "evaluation", "serve", "tasks"},
    "default_models": {"core", "deferral", "engines", "config", "evaluation", "tasks"},
    "smol_pair": {"core", "deferral", "engines", "config", "evaluation", "tasks"},
}


def test_pure_layers_import_no_ray_grpc_fastapi_or_torch():
    code = (
        "import importlib, json, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(h for h in {HEAVY!r} if h in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _imports(node: ast.AST, deps: set[str]) -> None:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serving"):
        deps.add(node.module)
        deps.update(f"{node.module}.{a.name}" for a in node.names)  # `from serving.fronts import grpc_api`
    elif isinstance(node, ast.Import):
        deps.update(a.name for a in node.names if a.name.startswith("serving"))


def _typing_only(tree: ast.Module) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:`` (never run)."""
    return {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }


def _modules():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if "_proto" not in name:
            yield name, ast.parse(path.read_text())


def all_imports() -> dict[str, set[str]]:
    """Module -> the ``serving`` modules it imports anywhere: at module level and inside functions and
    methods (what runs when they are called), not under ``if TYPE_CHECKING``."""
    graph = {}
    for name, tree in _modules():
        skip, deps = _typing_only(tree), set()
        for n in ast.walk(tree):
            if id(n) not in skip:
                _imports(n, deps)
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def module_imports() -> dict[str, set[str]]:
    """Module -> the ``serving`` modules it imports at module level (not inside functions, not under
    ``if TYPE_CHECKING``)."""
    graph = {}
    for name, tree in _modules():
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for n in [node] + (
                [c for c in ast.walk(node) if isinstance(c, (ast.Import, ast.ImportFrom))]
                if isinstance(node, (ast.If, ast.Try))
                else []
            ):
                _imports(n, deps)
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def downward_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        parts = mod.split(".")
        if len(parts) < 3:
            continue
        folder = parts[1]
        for d in deps:
            other = d.split(".")[1] if len(d.split(".")) > 1 else ""
            if other and other != folder and other not in LEAVES and other not in ALLOWED[folder]:
                bad.append(f"{mod} -> {d}")
    return sorted(bad)


def test_folders_import_only_downward():
    assert downward_violations(module_imports()) == []


def test_imports_inside_functions_go_only_downward_too():
    """A function-level import is a dependency all the same (it is how a layer would hide one): the same rules."""
    assert downward_violations(all_imports()) == []


def test_the_import_walk_sees_function_level_imports(tmp_path, monkeypatch):
    """A method's import is seen; one under ``if TYPE_CHECKING`` is not."""
    pkg = tmp_path / "serving"
    (pkg / "config").mkdir(parents=True)
    (pkg / "serve").mkdir()
    (pkg / "serve" / "autoscaling.py").write_text("")
    (pkg / "config" / "schema.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from serving.serve import autoscaling as typing_only\n"
        "class A:\n"
        "    def f(self):\n"
        "        from serving.serve.autoscaling import POLICY\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert module_imports()["serving.config.schema"] == set()
    assert all_imports()["serving.config.schema"] == {"serving.serve.autoscaling"}
    assert downward_violations(all_imports()) == ["serving.config.schema -> serving.serve.autoscaling"]


def test_the_leaves_import_nothing_from_serving():
    graph = all_imports()
    assert {m: d for m, d in graph.items() if set(m.split(".")[1:2]) & LEAVES and d} == {}


def test_no_import_cycles():
    graph = module_imports()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []
