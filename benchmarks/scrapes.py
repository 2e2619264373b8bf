"""Concurrent scrapes against a training job: how much 8 Prometheus-like scrapers slow its steps.

    python -m benchmarks.scrapes            # about 2 minutes; writes docs/scrapes.json and its section of docs/benchmarks.md

A model trains with the agent attached and serving /metrics. Eight scraper processes (separate processes, as
Prometheus is) each request /metrics over a kept-alive connection, asking for OpenMetrics and gzip as Prometheus
does, at ``--rate`` requests per second each (30: 240 req/s in all, the load of the issue that measured 2.2-2.6x
slower steps when every scrape rendered in the training process). The scrapers are switched on and off in
alternating windows of ``--window`` steps; the slowdown is the summed step time of the "on" windows over the
"off" windows. The same scrapers against a separate process serving bytes of the same size give the reference:
what the scrapers' own CPU use costs a 2-core machine, whoever serves them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- scrapes:begin -->", "<!-- scrapes:end -->"
"""Markers of the section of docs/benchmarks.md this benchmark owns (benchmarks.report keeps it)."""


def _scraper(port: int, rate: float, go: Any, stop: Any, count: Any, ready: Any) -> None:
    """One scraper process: GET /metrics at ``rate`` per second while ``go`` is set (imports no torch)."""
    with ready.get_lock():
        ready.value += 1
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5", "Accept-Encoding": "gzip"}
    period = 1.0 / rate
    while not stop.is_set():
        if not go.wait(0.1):
            continue
        t0 = time.monotonic()
        try:
            conn.request("GET", "/metrics", headers=headers)
            conn.getresponse().read()
            with count.get_lock():
                count.value += 1
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        time.sleep(max(0.0, period - (time.monotonic() - t0)))


def _reference_server(body: bytes, ready: Any, port: Any, stop: Any) -> None:
    """A separate process serving fixed bytes: the cost of the scrapers themselves."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port.value = server.server_address[1]
    ready.set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()


def _windows(step: Any, go: Any, count: Any, window: int, pairs: int) -> dict[str, float]:
    """Alternate off/on windows of ``window`` steps (``pairs`` of each, order alternating); step time sums."""
    sums = {"off": 0.0, "on": 0.0}
    per_pair: list[float] = []
    half: dict[bool, float] = {}
    seconds_on = 0.0
    requests = 0
    for k in range(2 * pairs):
        on = (k % 2 == 1) if (k // 2) % 2 == 0 else (k % 2 == 0)
        go.set() if on else go.clear()
        for _ in range(3):  # let the scrapers start or stop
            step()
        c0, w0 = count.value, time.perf_counter()
        total = 0.0
        for _ in range(window):
            t0 = time.perf_counter()
            step()
            total += time.perf_counter() - t0
        sums["on" if on else "off"] += total
        half[on] = total
        if k % 2 == 1:  # a pair of adjacent windows, one of each
            per_pair.append(half[True] / half[False])
        print(f"window {k}: {'on' if on else 'off'} {1000 * total / window:.1f} ms/step", file=sys.stderr, flush=True)
        if on:
            requests += count.value - c0
            seconds_on += time.perf_counter() - w0
    go.clear()
    # The median over adjacent pairs: a burst of load from elsewhere on the machine moves one pair, not the figure.
    return {"ratio": statistics.median(per_pair), "ratio_summed": sums["on"] / sums["off"],
            "pair_ratios": [round(r, 4) for r in per_pair], "requests_per_second": requests / max(seconds_on, 1e-9),
            "off_step_ms": 1000 * sums["off"] / (pairs * window)}


def run(scrapers: int = 8, rate: float = 30.0, window: int = 40, pairs: int = 6, family: str = "mlp",
        size: str = "1M") -> dict[str, Any]:
    """Measure the slowdown with scrapers against the agent and against a separate process."""
    import torch

    import agent

    from .models import workload

    work = workload(family, size)
    torch.manual_seed(0)
    model = work.build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = work.batches()
    state = {"i": 0}

    def step() -> None:
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        work.loss(model(x), y).backward()
        opt.step()

    mon = agent.attach(model, opt, port=0, addr="127.0.0.1")
    for _ in range(30):
        step()
    ctx = mp.get_context("spawn")
    go, stop, count = ctx.Event(), ctx.Event(), ctx.Value("l", 0)
    body = mon.exporter.cache.body(True, True)[1]
    ready, ref_port = ctx.Event(), ctx.Value("i", 0)
    ref = ctx.Process(target=_reference_server, args=(b"x" * len(body), ready, ref_port, stop), daemon=True)
    ref.start()
    ready.wait(30)
    results: dict[str, Any] = {"scrapers": scrapers, "rate_per_scraper": rate, "window_steps": window, "pairs": pairs,
                               "model": work.name, "threads": torch.get_num_threads()}
    try:
        for target, port in (("agent", mon.exporter.server.port), ("separate_process", ref_port.value)):
            started, done = ctx.Value("i", 0), ctx.Event()
            procs = [ctx.Process(target=_scraper, args=(port, rate, go, done, count, started), daemon=True)
                     for _ in range(scrapers)]
            for p in procs:
                p.start()
            deadline = time.monotonic() + 60
            while started.value < scrapers and time.monotonic() < deadline:  # imports done: nothing left to start
                time.sleep(0.1)
            time.sleep(1.0)
            renders0 = mon.exporter.cache.renders
            results[target] = _windows(step, go, count, window, pairs)
            if target == "agent":
                results[target]["renders"] = mon.exporter.cache.renders - renders0
                results[target]["sampled_steps"] = mon.sampled_steps
                results[target]["threads_in_process"] = threading.active_count()
            done.set()  # not terminate(): a scraper killed while holding the counter's lock would hang the next phase
            for p in procs:
                p.join(5)
    finally:
        stop.set()
        ref.join(5)
        mon.close()
    results["agent"]["over_reference"] = results["agent"]["ratio"] / results["separate_process"]["ratio"]
    return results


def markdown(r: dict[str, Any]) -> str:
    """The section of docs/benchmarks.md, between the markers."""
    a, s = r["agent"], r["separate_process"]
    return "\n".join([
        BEGIN,
        "## Concurrent scrapes",
        "",
        f"Generated by `python -m benchmarks.scrapes` ({r['model']}, AdamW, agent at default settings, "
        f"torch threads {r['threads']}). {r['scrapers']} scraper processes ask for OpenMetrics with gzip over kept-alive "
        f"connections at {r['rate_per_scraper']:g} requests per second each, switched on and off in alternating windows "
        f"of {r['window_steps']} steps ({r['pairs']} of each); the figure is the median over adjacent on/off pairs of "
        "their step-time ratio.",
        "",
        "| scrapers against | requests/s | step time, scrapers on / off (median of pairs) |",
        "|---|---|---|",
        f"| the agent's /metrics | {a['requests_per_second']:.0f} | {a['ratio']:.3f} |",
        f"| a separate process serving bytes of the same size | {s['requests_per_second']:.0f} | {s['ratio']:.3f} |",
        "",
        f"- Slowdown that the agent's serving adds over the separate process: {100 * (a['over_reference'] - 1):+.1f}% "
        f"(budget: +5%). Plain step {a['off_step_ms']:.1f} ms.",
        f"- /metrics renders during the scraped windows: {a['renders']}, at most one per new snapshot or second however many scrapes "
        f"came; each scrape copies cached bytes. Threads in the training process: {a['threads_in_process']} (one "
        "server thread, none per connection).",
        "- On this 2-core machine the scrapers' own CPU use shows in both rows; the agent's share is the difference. "
        "The reference server (Python's threading server, a thread per connection) answers fewer requests per "
        "second than the agent at the same request rate, so its row carries somewhat less scraper load.",
        END,
    ])


def write(results: dict[str, Any], out_dir: Path) -> None:
    """docs/scrapes.json, and the section in docs/benchmarks.md (replaced, or appended once)."""
    (out_dir / "scrapes.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    md = out_dir / "benchmarks.md"
    text = md.read_text() if md.exists() else ""
    section = markdown(results)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    md.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scrapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scrapers", type=int, default=8)
    p.add_argument("--rate", type=float, default=30.0, help="requests per second per scraper")
    p.add_argument("--window", type=int, default=40, help="steps per on/off window")
    p.add_argument("--pairs", type=int, default=6, help="windows of each kind")
    p.add_argument("--out", default="docs")
    args = p.parse_args(argv)
    results = run(args.scrapers, args.rate, args.window, args.pairs)
    write(results, Path(args.out))
    a, s = results["agent"], results["separate_process"]
    print(f"agent {a['ratio']:.3f} at {a['requests_per_second']:.0f} req/s; separate process {s['ratio']:.3f}; "
          f"agent over reference {100 * (a['over_reference'] - 1):+.1f}%; renders {a['renders']}")
    print(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
