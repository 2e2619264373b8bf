"""``nnwatch dashboards push|generate``: upload the dashboards to a running Grafana (``grafana-client``), or regenerate them.

Each dashboard is created or overwritten by uid in one folder (created when missing); failures a user can
fix (no URL, a rejected token, an unreachable Grafana) end in one line saying what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from .dashboards import FILES, FOLDER_TITLE, FOLDER_UID, build_all


class PushError(RuntimeError):
    """A push failed for a reason the user can fix; the message says how."""


def load_dashboards(folder: Path | None) -> list[dict[str, Any]]:
    """The committed dashboards from ``folder`` (default: the checkout's dashboards/), or built in memory
    when no folder has them (an installed package without the checkout)."""
    from ..assets import asset

    folder = folder if folder is not None else asset("dashboards/nnwatch-overview.json").parent
    paths = [folder / name for name in FILES.values()]
    if all(p.is_file() for p in paths):
        return [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    try:
        return list(build_all().values())
    except ModuleNotFoundError:
        raise PushError(f"no dashboards in {folder} and grafana-foundation-sdk is not installed to build them; "
                        "pass --dir pointing at nnwatch's dashboards/ folder") from None


def push(url: str, token: str | None, dashboards: Iterable[dict[str, Any]], folder_uid: str = FOLDER_UID,
         folder_title: str = FOLDER_TITLE, timeout: float = 10.0) -> list[str]:
    """Create or overwrite each dashboard (matched by uid) in the folder ``folder_uid``, creating the folder
    when missing. Returns the dashboards' URLs as Grafana reports them. Running it twice changes nothing
    but the dashboards' version numbers."""
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaClientError, GrafanaException
    except ModuleNotFoundError:
        raise PushError("pushing needs grafana-client: pip install 'nnwatch[grafana]'") from None

    boards = list(dashboards)
    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
    step = "connecting"
    try:
        api.health.check()
        step = "looking up the folder"
        try:
            api.folder.get_folder(folder_uid)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            step = "creating the folder"
            api.folder.create_folder(folder_title, uid=folder_uid)
        urls = []
        for board in boards:
            step = f"uploading dashboard {board.get('uid')}"
            body = {"dashboard": {**board, "id": None}, "folderUid": folder_uid, "overwrite": True,
                    "message": "nnwatch dashboards push"}
            reply = api.dashboard.update_dashboard(body)
            urls.append(str(reply.get("url", "")) if isinstance(reply, dict) else "")
        step = "listing the pushed dashboards"
        uids = [b.get("uid") for b in boards]
        found = {d.get("uid") for d in api.search.search_dashboards(dashboard_uids=uids, type_="dash-db") or []}
        missing = [b.get("uid") for b in boards if b.get("uid") not in found]
        if missing:
            raise PushError(f"Grafana at {url} accepted the dashboards but search does not list {missing}")
        return urls
    except GrafanaClientError as exc:
        if exc.status_code in (401, 403):
            what = "rejected the token" if exc.status_code == 401 else "refused the token's permissions"
            raise PushError(
                f"Grafana at {url} {what} (HTTP {exc.status_code}) while {step}. Pass a service account token "
                "with the Editor role (or Admin to create the folder) via --token or NNWATCH_GRAFANA_TOKEN."
            ) from None
        raise PushError(f"Grafana at {url} answered HTTP {exc.status_code} while {step}: {exc.message}") from None
    except (OSError, GrafanaException) as exc:  # the HTTP library's connection errors are OSErrors
        raise PushError(f"cannot reach Grafana at {url} while {step} ({_short(exc)}); check --url or "
                        "NNWATCH_GRAFANA_URL and that Grafana is running.") from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] [^')\"]+", text)
    return m.group(0) if m else text[:200]


def push_command(args: argparse.Namespace) -> int:
    """``nnwatch dashboards push``: 0 when pushed, 1 when Grafana refused or is unreachable, 2 without a URL."""
    url = args.url or os.environ.get("NNWATCH_GRAFANA_URL")
    token = args.token or os.environ.get("NNWATCH_GRAFANA_TOKEN")
    if not url:
        print("nnwatch dashboards push: no Grafana URL; pass --url or set NNWATCH_GRAFANA_URL "
              "(e.g. http://localhost:3000)", file=sys.stderr)
        return 2
    try:
        boards = load_dashboards(Path(args.dir) if args.dir else None)
        urls = push(url, token, boards, folder_uid=args.folder_uid, folder_title=args.folder, timeout=args.timeout)
    except PushError as exc:
        print(f"nnwatch dashboards push: {exc}", file=sys.stderr)
        return 1
    base = url.rstrip("/")
    for board, path in zip(boards, urls):
        print(f"pushed {board['uid']}: {base}{path}" if path else f"pushed {board['uid']}")
    return 0


# --- command line --------------------------------------------------------------------------------


def _generate_command(args: argparse.Namespace) -> int:
    from . import chart
    from .dashboards import generate
    from .paths import generation_root

    root = generation_root(args.root)
    for path in generate(root) + chart.generate(root):
        print(f"wrote {path.relative_to(root)}")
    return 0


def register(sub: Any) -> None:
    """Add ``nnwatch dashboards push|generate``."""
    p = sub.add_parser("dashboards", help="Grafana dashboards: push them to a running Grafana, or regenerate them")
    dsub = p.add_subparsers(dest="dashboards_command", required=True)
    push_p = dsub.add_parser("push", help="create or overwrite the nnwatch dashboards in a Grafana (by uid)")
    push_p.add_argument("--url", help="Grafana base URL, e.g. http://localhost:3000 (env NNWATCH_GRAFANA_URL)")
    push_p.add_argument("--token", help="service account token with the Editor role (env NNWATCH_GRAFANA_TOKEN); "
                        "user:password in the URL also works")
    push_p.add_argument("--folder", default=FOLDER_TITLE, help=f"folder title (default: {FOLDER_TITLE})")
    push_p.add_argument("--folder-uid", default=FOLDER_UID, help=f"folder uid (default: {FOLDER_UID})")
    push_p.add_argument("--dir", help="folder with the dashboard JSON (default: the checkout's dashboards/)")
    push_p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default: 10)")
    push_p.set_defaults(func=push_command)
    gen_p = dsub.add_parser("generate", help="rewrite dashboards/*.json and the Helm chart's copies")
    gen_p.add_argument("--root", help="repository root to write into (default: this checkout)")
    gen_p.set_defaults(func=_generate_command)


__all__ = ["PushError", "load_dashboards", "push", "push_command", "register"]
