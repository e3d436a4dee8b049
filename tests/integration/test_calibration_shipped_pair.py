"""Calibration on the shipped pair, run through the server's backend in-process (no mocks): the
threshold picked on one split must hit its target on a held-out split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.evaluation.calibrate import ARTIFACT_FORMAT, calibrate
from serving.evaluation.data import write_arithmetic_splits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_arithmetic_splits(d, {"train": 800, "calibration": 800, "test": 800})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("offline-cache")


def test_cli_calibrate_target_deferral_holds_on_heldout(splits, cache, tmp_path):
    out = tmp_path / "art.json"
    env = dict(os.environ, CASCADE_CACHE=str(cache))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.ops.cli",
            "calibrate",
            "--config",
            str(TOY_CONFIG),
            "--data",
            str(splits["calibration"]),
            "--eval-data",
            str(splits["test"]),
            "--target-deferral",
            "0.3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "heldout" in r.stdout and "threshold" in r.stdout
    art = json.loads(out.read_text())
    assert art["format"] == ARTIFACT_FORMAT and art["rule"] == "chow_quantile"
    assert art["target"] == {"kind": "deferral", "value": 0.3}
    assert len(art["data"]["sha256"]) == 64 and art["created"] and set(art["tiers"]) == {"weak", "strong"}
    assert abs(art["metrics"]["fit"]["deferral_share"] - 0.3) < 0.005
    assert abs(art["metrics"]["heldout"]["deferral_share"] - 0.3) <= 0.03
    # a config can point at it; the threshold then comes from the artifact
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    raw["deferral"] = {"artifact": str(out)}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw))
    cfg = load_config(cfg_path)
    assert cfg.deferral.resolved().threshold == art["threshold"]


def test_calibrate_post_hoc_for_target_pgr_holds_on_heldout(splits, cache):
    art = calibrate(
        load_config(TOY_CONFIG),
        str(splits["calibration"]),
        target_pgr=0.9,
        rule="post_hoc_quantile",
        train_data=str(splits["train"]),
        eval_data=str(splits["test"]),
        cache=cache,
    )
    assert art["rule"] == "post_hoc_quantile" and art["model"]["kind"] == "quantile"
    assert art["metrics"]["fit"]["pgr"] >= 0.9
    assert art["metrics"]["heldout"]["pgr"] >= 0.9 - 0.03  # within 3 points of the target, or above it
    parse_config({**load_config(TOY_CONFIG).model_dump(mode="json"), "deferral": {"artifact": art}})  # usable inline
