"""``nnwatch demo``: a short training run on scikit-learn's digits, watched by the agent.

A silent failure is planted (by default: three quarters of the second hidden layer's biases start at -8,
which kills those ReLUs for good; the loss still goes down and accuracy looks fine, nothing raises). The agent names the layer within a few dozen steps.
The run is recorded in a local history (``--out``, default ./nnwatch-demo/history.sqlite, recorded anew each
time) and ends by writing ``report.html`` next to it (``nnwatch report``) and printing its path as the last line.
``--preflight`` first runs :func:`agent.preflight` on the model, the first training batch and the demo's
optimizer, and prints its report (``--fault lr-zero`` fails its overfit check).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .ops.cli_args import UsageError

FAULTS = ("dead-relu", "no-zero-grad", "lr-zero", "nan", "none")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="train a small MLP on scikit-learn digits with a planted silent failure")
    p.add_argument("--fault", choices=FAULTS, default="dead-relu", help="silent failure to plant (default: dead-relu)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    p.add_argument("--port", type=int, default=0, help="/metrics port (default: 0 = a free port)")
    p.add_argument("--addr", default="127.0.0.1", help="/metrics bind address (default: 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--hold", type=float, default=30.0,
                   help="seconds to keep serving /metrics after training (default: 30; Ctrl-C ends it)")
    p.add_argument("--sample-every", type=int, default=5, help="heavy statistics every N steps (default: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="nnwatch-demo",
                   help="folder for the run's history (history.sqlite, recorded anew) and its HTML report (report.html); "
                        "default: ./nnwatch-demo")
    p.add_argument("--preflight", action="store_true",
                   help="before training, run agent.preflight on the model and the first batch and print its report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F
    from torch import nn

    import agent

    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise UsageError("the demo trains on scikit-learn's bundled digits: pip install 'nnwatch[demo]' "
                         "(or pip install scikit-learn)") from None

    torch.manual_seed(args.seed)
    digits = load_digits()  # 1,797 8x8 images shipped inside scikit-learn: no download
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x))
    x, y = x[perm], y[perm]
    x_train, y_train, x_val, y_val = x[:1500], y[:1500], x[1500:], y[1500:]

    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )
    lr = 0.0 if args.fault == "lr-zero" else 0.05
    if args.fault == "dead-relu":
        with torch.no_grad():
            model[2].bias[:96] = -8.0  # the planted fault: 3 of 4 units of layer 2 start (and stay) negative
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    batch = 64

    print(f"nnwatch demo: MLP 64-128-128-10 on scikit-learn digits ({len(x_train)} train / {len(x_val)} val), "
          f"planted fault: {args.fault}")
    if args.preflight:  # on a copy of the model with its own optimizer: training below starts from the same state
        report = agent.preflight(model, (x_train[:batch], y_train[:batch]), F.cross_entropy, num_classes=10,
                                 optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9))
        print(f"{report}\n")
    out = _writable(Path(args.out).resolve())
    history, report_path = out / "history.sqlite", out / "report.html"
    for stale in (history, Path(f"{history}-wal"), Path(f"{history}-shm")):
        stale.unlink(missing_ok=True)  # a new demo records a new history (an existing one would be continued)
    monitor = agent.attach(model, optimizer, port=args.port, num_classes=10, sample_every=args.sample_every,
                           addr=args.addr, history=str(history))
    if monitor.url:
        print(f"metrics: {monitor.url}")
    seen_findings: set[tuple[str, str | None]] = set()
    t0 = time.perf_counter()
    with monitor:
        for step in range(args.steps):
            idx = torch.randint(0, len(x_train), (batch,))
            xb = x_train[idx]
            if args.fault == "nan" and step >= args.steps // 2:
                xb = xb.clone()
                xb[0, 0] = math.nan
            out = model(xb)
            loss = F.cross_entropy(out, y_train[idx])
            if args.fault != "no-zero-grad":
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            monitor.log(loss=loss)
            if step % 50 == 0 or step == args.steps - 1:
                with torch.no_grad():
                    model.eval()
                    acc = (model(x_val).argmax(1) == y_val).float().mean().item()
                    val_loss = F.cross_entropy(model(x_val), y_val)
                    model.train()
                monitor.log(val_loss=val_loss)
                print(_progress_line(step, loss.item(), acc, monitor))
            for f in monitor.findings:
                if (f.check, f.module) not in seen_findings:
                    seen_findings.add((f.check, f.module))
        elapsed = time.perf_counter() - t0
        print(f"\ntrained {args.steps} steps in {elapsed:.1f} s")
        findings = monitor.findings
        if findings:
            print(f"the agent found {len(findings)} problem(s):")
            for f in findings:
                where = f" [{f.module}]" if f.module else ""
                print(f"  - {f.severity.upper()} {f.check}{where} since step {f.step}")
        else:
            print("the agent found no problem")
        report_file = _report(monitor, history, report_path)
        if monitor.url and args.hold > 0:
            if report_file:
                print(f"report: {report_file}")
            print(f"\nmetrics stay at {monitor.url} for {args.hold:.0f} s (Ctrl-C to stop)")
            try:
                time.sleep(args.hold)
            except KeyboardInterrupt:
                pass
    if report_file:
        print(f"report: {report_file}")  # the last line: open it in a browser (no network needed)
    return 0


def _writable(out: Path) -> Path:
    """``out``, created; a folder under the system's temporary directory when ``out`` cannot be written (a
    container's read-only working directory)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if os.access(out, os.W_OK):
            return out
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "nnwatch-demo"
    fallback.mkdir(parents=True, exist_ok=True)
    print(f"cannot write to {out}; the history and report go to {fallback}")
    return fallback


def _report(monitor: Any, history: Path, out: Path) -> Path | None:
    """Write the HTML report of the history recorded so far; None (and a line saying why) when it cannot."""
    from .ops.report import MissingPlotly, write_report

    monitor.flush()
    try:
        return write_report(history, out)
    except (MissingPlotly, OSError, ValueError) as exc:
        print(f"no report: {exc}")
        return None


def _progress_line(step: int, loss: float, acc: float, monitor: Any) -> str:
    snap = monitor.snapshot
    parts = [f"step {step:4d}", f"loss {loss:.3f}", f"val acc {acc:.1%}"]
    if snap is not None:
        if snap.grad_norm is not None:
            parts.append(f"grad norm {snap.grad_norm:.3g}")
        dead = {a.key: a.dead_ratio for a in snap.activations if a.dead_ratio is not None}
        if dead:
            parts.append("dead units " + " ".join(f"{k}={v:.0%}" for k, v in dead.items()))
    return " | ".join(parts)


if __name__ == "__main__":
    import sys

    from .cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
