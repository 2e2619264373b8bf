"""``nnwatch stack``: a local Prometheus and Alertmanager for users without Kubernetes.

Starts the installed ``prometheus`` and ``prometheus-alertmanager`` (Debian/Ubuntu packages of the same
names; upstream ``alertmanager`` works too) on 127.0.0.1 with the shipped alert rules and Alertmanager
config, scraping local training jobs, prints their URLs and stops both on Ctrl-C. Nothing is installed or
left running; data lives in a temporary directory unless ``--dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assets import asset, runbooks_url
from ..config import DEFAULT_PORT
from . import cli_args
from .cli_args import UsageError

log = logging.getLogger("nnwatch")

SECRETS_DIR = "/etc/alertmanager/secrets/nnwatch/"
"""Where the shipped alertmanager.yml expects its secret files (a mounted Kubernetes Secret)."""


def _binary(names: tuple[str, ...], package: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(f"nnwatch stack: {names[0]} not found; install it (e.g. `sudo apt-get install {package}`)")


def prometheus_config(targets: list[str], job: str, alertmanager: str, rules: Path, scrape_interval: str) -> dict[str, Any]:
    """Prometheus configuration: scrape ``targets`` as ``job``, send alerts to ``alertmanager`` (host:port)."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }


def alertmanager_config(shipped: Path, templates: Path, slack_url_file: str | None,
                        pagerduty_key_file: str | None) -> dict[str, Any]:
    """The shipped Alertmanager config with local secret files; a receiver whose secret was not given is
    left without integrations (its alerts stay visible in the Alertmanager UI)."""
    import yaml

    cfg = yaml.safe_load(shipped.read_text())
    cfg["templates"] = [str(templates / "*.tmpl")]
    for receiver in cfg.get("receivers", []):
        if "slack_configs" in receiver:
            if slack_url_file:
                for c in receiver["slack_configs"]:
                    c["api_url_file"] = str(Path(slack_url_file).resolve())
            else:
                del receiver["slack_configs"]
        if "pagerduty_configs" in receiver:
            if pagerduty_key_file:
                for c in receiver["pagerduty_configs"]:
                    c["routing_key_file"] = str(Path(pagerduty_key_file).resolve())
            else:
                del receiver["pagerduty_configs"]
    text = json.dumps(cfg)
    if SECRETS_DIR in text:
        raise ValueError(f"the Alertmanager config still refers to {SECRETS_DIR}; pass the secret files")
    return cfg


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL when it is still running after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path

    def tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)


def _start(name: str, argv: list[str], port: int, state: Path, timeout: float = 30.0) -> _Child:
    log_path = state / f"{name}.log"
    with open(log_path, "wb") as out:
        # Own session: Ctrl-C reaches only us, and we stop the children in order.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=state, start_new_session=True)
    child = _Child(name, proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{child.tail()}")
        try:
            with urllib.request.urlopen(child.url + "/-/ready", timeout=1):
                return child
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    child.stop()
    raise RuntimeError(f"{name} did not become ready within {timeout:.0f} s:\n{child.tail()}")


def run(args: argparse.Namespace) -> int:
    prometheus = _binary(("prometheus",), "prometheus")
    alertmanager = _binary(("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager")
    cli_args.duration(args.scrape_interval, "--scrape-interval", positive=True)
    for flag, value in (("--rules", args.rules), ("--slack-webhook-url-file", args.slack_webhook_url_file),
                        ("--pagerduty-routing-key-file", args.pagerduty_routing_key_file)):
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{flag}: {value} is not a file")
    if args.runbook_base_url is not None:
        cli_args.url(args.runbook_base_url, "--runbook-base-url")
    am_source = Path(args.alertmanager_config) if args.alertmanager_config else asset("alerts/alertmanager.yml")
    if not am_source.is_file():
        raise UsageError(f"--alertmanager-config: {am_source} does not exist")
    templates = am_source.parent / "templates"

    temporary = args.dir is None
    state = Path(args.dir or tempfile.mkdtemp(prefix="nnwatch-stack-")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if args.rules:
        rules = Path(args.rules).resolve()
    else:  # the shipped rules, linking the runbooks installed here (JSON is YAML)
        from .rules import RulesConfig, render_groups

        rules = state / "nnwatch.rules.yml"
        config = RulesConfig(runbook_base_url=args.runbook_base_url or runbooks_url())
        rules.write_text(json.dumps({"groups": render_groups(config)}, indent=1))

    am_cfg = alertmanager_config(am_source, templates.resolve(), args.slack_webhook_url_file,
                                 args.pagerduty_routing_key_file)
    (state / "alertmanager.yml").write_text(json.dumps(am_cfg, indent=1))
    prom_cfg = prometheus_config(args.target, args.job, f"127.0.0.1:{args.alertmanager_port}", rules,
                                 args.scrape_interval)
    (state / "prometheus.yml").write_text(json.dumps(prom_cfg, indent=1))

    children: list[_Child] = []
    stop_requested = False

    def on_signal(*_: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.append(_start("alertmanager", [
            alertmanager, f"--config.file={state / 'alertmanager.yml'}", f"--storage.path={state / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{args.alertmanager_port}", "--cluster.listen-address=",
            f"--web.external-url=http://127.0.0.1:{args.alertmanager_port}",
        ], args.alertmanager_port, state))
        children.append(_start("prometheus", [
            prometheus, f"--config.file={state / 'prometheus.yml'}", f"--storage.tsdb.path={state / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{args.prometheus_port}",
            f"--web.external-url=http://127.0.0.1:{args.prometheus_port}",
        ], args.prometheus_port, state))
        am, prom = children
        notify = [n for n, given in (("Slack", args.slack_webhook_url_file), ("PagerDuty", args.pagerduty_routing_key_file)) if given]
        print(f"nnwatch stack is up (state in {state}):\n"
              f"  Prometheus    {prom.url}  (alerts: {prom.url}/alerts, targets: {prom.url}/targets)\n"
              f"  Alertmanager  {am.url}\n"
              f"  scraping      {', '.join(args.target)} as job {args.job!r} every {args.scrape_interval}\n"
              f"  rules         {rules}\n"
              f"  notifications {' and '.join(notify) if notify else 'none (pass --slack-webhook-url-file / --pagerduty-routing-key-file)'}\n"
              f"Train with agent.attach(model, optimizer, port={args.target[0].rsplit(':', 1)[-1]}) "
              f"(or `nnwatch demo --port {args.target[0].rsplit(':', 1)[-1]}`). Ctrl-C stops the stack.", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop_requested and (deadline is None or time.monotonic() < deadline):
            for child in children:
                if child.proc.poll() is not None:
                    print(f"nnwatch stack: {child.name} exited with code {child.proc.returncode}:\n{child.tail()}",
                          file=sys.stderr)
                    return 1
            time.sleep(0.2)
        print("nnwatch stack: stopping", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"nnwatch stack: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if temporary:
            shutil.rmtree(state, ignore_errors=True)


def register(sub: Any) -> None:
    p = sub.add_parser("stack", help="run a local Prometheus + Alertmanager with the nnwatch rules, scraping local jobs")
    p.add_argument("--target", action="append", default=None, metavar="HOST:PORT",
                   help=f"/metrics endpoint of a training job (repeatable; default: 127.0.0.1:{DEFAULT_PORT}, "
                        "the agent's default port)")
    p.add_argument("--job", default="nnwatch", help="Prometheus job label of the targets (default: nnwatch)")
    p.add_argument("--scrape-interval", default="15s", help="scrape and rule evaluation interval (default: 15s)")
    p.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus port on 127.0.0.1 (default: 9090)")
    p.add_argument("--alertmanager-port", type=int, default=9093, help="Alertmanager port on 127.0.0.1 (default: 9093)")
    p.add_argument("--slack-webhook-url-file", help="file holding a Slack incoming-webhook URL (warnings go there)")
    p.add_argument("--pagerduty-routing-key-file", help="file holding a PagerDuty Events v2 routing key (pages)")
    p.add_argument("--rules", help="alert rule file (default: the shipped rules, rendered with --runbook-base-url)")
    p.add_argument("--runbook-base-url", help="URL of your copy of docs/runbooks.md that alerts link to "
                   "(default: the runbooks installed with nnwatch)")
    p.add_argument("--alertmanager-config", help="Alertmanager config (default: the shipped alerts/alertmanager.yml)")
    p.add_argument("--dir", help="keep configs, logs and data in this directory (default: a temporary one, removed)")
    p.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)  # tests: stop after N seconds
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.target:
        args.target = [f"127.0.0.1:{DEFAULT_PORT}"]
    return run(args)


__all__ = ["register", "run", "prometheus_config", "alertmanager_config"]
