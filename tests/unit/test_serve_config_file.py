from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from serving.app import SERVICER, resolve_config
from serving.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_local_serve_config_is_valid_and_matches_the_project_config():
    raw = yaml.safe_load((ROOT / "cluster" / "serve_local.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.import_path == "serving.app:build_app"
    cfg = resolve_config(app.args)
    assert cfg == load_config()
    assert raw["grpc_options"]["port"] == cfg.server.grpc_port
    assert raw["grpc_options"]["grpc_servicer_functions"] == [SERVICER]
