"""A real training process for end-to-end tests: an MLP on scikit-learn's digits with the agent attached,
serving /metrics on a free port, with a fault that a control file switches on and off.

    python tests/e2e/trainer.py --fault nan|dead|none --ready FILE --control FILE --events FILE

Writes the /metrics URL to --ready once serving. While --control exists the fault is active:
``nan`` feeds a NaN input (loss, gradients and then weights turn NaN; when the fault ends the run reloads
the checkpoint taken just before it, as an operator would), ``dead`` pushes the biases in front of
``act2`` far negative so 3 of 4 of its ReLUs never activate (restored when the fault ends). Each switch is
appended to --events as ``<fault_on|fault_off> <unix time>``. Runs until --stop exists, SIGTERM, or
--max-seconds.
"""

from __future__ import annotations

import argparse
import copy
import math
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fault", choices=("none", "nan", "dead"), default="none")
    p.add_argument("--ready", required=True, help="file that receives the /metrics URL once serving")
    p.add_argument("--control", help="the fault is active while this file exists")
    p.add_argument("--events", help="file that receives fault_on/fault_off lines with their unix time")
    p.add_argument("--stop", help="training ends when this file exists")
    p.add_argument("--step-sleep", type=float, default=0.05, help="pause per step in seconds (keeps CPU free)")
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()

    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn

    import agent

    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    model = nn.Sequential(OrderedDict(
        fc1=nn.Linear(64, 64), act1=nn.ReLU(), fc2=nn.Linear(64, 64), act2=nn.ReLU(), head=nn.Linear(64, 10),
    ))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = agent.attach(model, opt, port=args.port, addr="127.0.0.1", sample_every=1, num_classes=10)
    if monitor.url is None:
        print("nnwatch did not serve /metrics", file=sys.stderr)
        return 1
    ready = Path(args.ready)
    ready.with_suffix(".tmp").write_text(monitor.url)
    ready.with_suffix(".tmp").replace(ready)

    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    control = Path(args.control) if args.control else None
    stop = Path(args.stop) if args.stop else None
    active = False
    saved: dict = {}
    g = torch.Generator().manual_seed(1)
    t_end = time.monotonic() + args.max_seconds

    def event(name: str) -> None:
        if args.events:
            with open(args.events, "a") as f:
                f.write(f"{name} {time.time():.3f}\n")

    with monitor:
        while not stopping and time.monotonic() < t_end and not (stop and stop.exists()):
            want = bool(control and control.exists())
            if want and not active:
                saved = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}
                if args.fault == "dead":
                    with torch.no_grad():
                        model.fc2.bias[:48] = -20.0
                active = True
                event("fault_on")
            elif active and not want:
                if args.fault == "nan":
                    model.load_state_dict(saved["model"])  # back to the checkpoint taken before the fault
                    opt.load_state_dict(saved["opt"])
                elif args.fault == "dead":
                    with torch.no_grad():
                        model.fc2.bias.copy_(saved["model"]["fc2.bias"])
                active = False
                event("fault_off")
            idx = torch.randint(0, len(x), (64,), generator=g)
            xb = x[idx]
            if active and args.fault == "nan":
                xb = xb.clone()
                xb[0, 0] = math.nan
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), y[idx])
            loss.backward()
            opt.step()
            monitor.log(loss=loss)
            time.sleep(args.step_sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
