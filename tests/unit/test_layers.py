"""The dependency rules of the package (serving/__init__.py): the request path's pure layers import no
Ray, grpc, FastAPI or torch; the folders import each other only downward; no module-level import cycle."""

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
HEAVY = ["ray", "torch", "transformers", "vllm", "fastapi", "starlette", "grpc"]

# folder -> the folders its modules may import at module level (besides itself and serving._proto)
ALLOWED = {
    "core": {"deferral"},
    "deferral": set(),
    "engines": {"core"},
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


def module_imports() -> dict[str, set[str]]:
    """Module -> the ``serving`` modules it imports at module level (not inside functions, not under
    ``if TYPE_CHECKING``)."""
    graph = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if "_proto" in name:
            continue
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for n in [node] + (
                [c for c in ast.walk(node) if isinstance(c, (ast.Import, ast.ImportFrom))]
                if isinstance(node, (ast.If, ast.Try))
                else []
            ):
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("serving"):
                    deps.add(n.module)
                    deps.update(f"{n.module}.{a.name}" for a in n.names)  # `from serving.fronts import grpc_api`
                elif isinstance(n, ast.Import):
                    deps.update(a.name for a in n.names if a.name.startswith("serving"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_folders_import_only_downward():
    bad = []
    for mod, deps in module_imports().items():
        parts = mod.split(".")
        if len(parts) < 3:
            continue
        folder = parts[1]
        for d in deps:
            other = d.split(".")[1] if len(d.split(".")) > 1 else ""
            if other and other != folder and other != "_proto" and other not in ALLOWED[folder]:
                bad.append(f"{mod} -> {d}")
    assert bad == []


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
