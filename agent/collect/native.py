"""Optional C++ kernels for statistics on CPU: built once per machine, loaded into torch, never required.

On CPU every torch kernel call costs about a microsecond of dispatch before any data moves, so a model
with a few hundred small tensors spends more time calling ``torch.dot`` than reading memory. The ops in
``agent/collect/csrc/kernels.cpp`` take the whole list of tensors in one call and read it at the rate of one flat
dot product (docs/benchmarks.md). They are compiled with the system C++ compiler against the installed
torch, cached under ``$NNWATCH_CACHE_DIR`` (default ``~/.cache/nnwatch``) by a key of the source, the
torch build and the compiler, and loaded with ``torch.ops.load_library``.

``attach()`` starts the build in a background thread at low priority when the model has CPU parameters
(the job does not wait: statistics use torch ops until the kernels are ready, a few seconds on a cold
cache, instantly afterwards). Without a compiler, or with ``NNWATCH_NATIVE=0`` or ``native=False``, the
torch-op path is used and one line says why. ``nnwatch native`` builds ahead of time (e.g. in an image).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # Windows: no file locks of this kind; the kernels are not built there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("nnwatch")

SOURCE = Path(__file__).resolve().parent / "csrc" / "kernels.cpp"
"""The kernels' C++ source, shipped with the package."""

BUILD_TIMEOUT_S = 300.0
"""Longest a compiler run may take before the build is given up (a cold build takes about 10 s)."""


@dataclass
class Status:
    """Where the kernels stand in this process."""

    state: str = "idle"
    """``idle`` (nothing asked yet), ``building``, ``ready``, ``unavailable`` or ``disabled``."""
    reason: str = ""
    """Why the kernels are unavailable or disabled (empty otherwise)."""
    path: Path | None = None
    """The loaded or attempted shared library."""
    build_seconds: float | None = None
    """Seconds the compiler ran in this process (None: loaded from the cache or not built)."""


_lock = threading.Lock()
_status = Status()
_ops: Any = None  # torch.ops.nnwatch once loaded: read without the lock on the hot path
_thread: threading.Thread | None = None


def kernels() -> Any:
    """``torch.ops.nnwatch`` when the kernels are loaded, else None. Never builds, never blocks."""
    return _ops


def status() -> Status:
    """A copy of this process's kernel status."""
    with _lock:
        return replace(_status)


def enabled_by_env() -> bool:
    """False when ``NNWATCH_NATIVE`` is set to 0/false/no/off."""
    return os.environ.get("NNWATCH_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where built kernels are kept: ``$NNWATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnwatch``, else
    ``~/.cache/nnwatch``; kernels go in its ``native/`` folder."""
    root = os.environ.get("NNWATCH_CACHE_DIR")
    if root:
        return Path(root) / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "nnwatch" / "native"


def compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else the first of c++, g++, clang++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx) or None
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _torch_dirs() -> tuple[list[str], str]:
    root = Path(torch.__file__).resolve().parent
    return [str(root / "include"), str(root / "include" / "torch" / "csrc" / "api" / "include")], str(root / "lib")


_ATTEMPTS = (("c++20", True), ("c++17", True), ("c++17", False))
"""(C++ standard, OpenMP) per compiler attempt. torch >= 2.10 headers want C++20, older ones build with
C++17. ``at::parallel_for`` is inline OpenMP in torch's headers: without -fopenmp the kernels run on one
thread (still one call per list, about 2x slower on two cores)."""


def _command(cxx: str, std: str, openmp: bool, out: Path) -> list[str]:
    includes, libdir = _torch_dirs()
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    cmd = [cxx, f"-std={std}", "-O3", "-fPIC", "-shared", "-fopenmp" if openmp else "-fopenmp-simd", "-w",
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    cmd += [f"-I{d}" for d in includes]
    cmd += [str(SOURCE), f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-ltorch_cpu", "-lc10", "-o", str(out)]
    return cmd


def library_path(cxx: str) -> Path:
    """The cached library for this source, torch build, compiler and machine."""
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    h.update(repr(_ATTEMPTS).encode())
    for part in (torch.__version__, str(getattr(torch.version, "git_version", "")), cxx, sys.platform,
                 platform.machine(), str(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", ""))):
        h.update(part.encode() + b"\0")
    return cache_dir() / f"kernels-{h.hexdigest()[:16]}.so"


def _compile(cxx: str, out: Path, nice: bool) -> float:
    """Compile into ``out`` (atomically: a temporary file renamed into place); returns seconds taken."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob("*.tmp.so"):  # left by a process that exited mid-build
        try:
            if time.time() - stale.stat().st_mtime > BUILD_TIMEOUT_S:
                stale.unlink()
        except OSError:
            pass
    t0 = time.perf_counter()
    errors = []
    for std, openmp in _ATTEMPTS:
        fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp.so", dir=out.parent)
        os.close(fd)
        cmd = _command(cxx, std, openmp, Path(tmp))
        if nice and shutil.which("nice"):
            cmd = ["nice", "-n", "19", *cmd]  # leave the cores to the training job
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode == 0:
                os.replace(tmp, out)
                return time.perf_counter() - t0
            errors.append(proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{cxx} failed: {'; '.join(e[0] for e in errors)}")


def _usable(path: Path) -> bool:
    """A cached library is usable when it exists and is not empty (builds are renamed into place whole, but
    a file left empty by an older version or a full disk must not be loaded)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _ensure_built(cxx: str, path: Path, nice: bool, damaged: bool = False) -> float | None:
    """Compile ``path`` unless a usable copy is cached (``damaged``: the cached copy failed to load); returns
    the compiler's seconds, None when the cache served. One compiler run per key across processes."""
    if _usable(path) and not damaged:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if damaged or not _usable(path):
            path.unlink(missing_ok=True)
            return _compile(cxx, path, nice)
    return None


def _set(state: str, reason: str = "", path: Path | None = None, seconds: float | None = None) -> None:
    with _lock:
        _status.state, _status.reason, _status.path, _status.build_seconds = state, reason, path, seconds


def build(nice: bool = False) -> Status:
    """Build (or find in the cache) and load the kernels in this thread; returns the status.

    Safe to call from several threads and processes at once: one compiler run per machine and key
    (a file lock), one load per process. Never raises: a failure is returned as ``unavailable``.
    """
    t = _thread
    if t is not None and t is not threading.current_thread():
        t.join()  # a background build is under way (or done): its outcome is this process's
    with _lock:
        if _status.state in ("ready", "unavailable", "disabled"):
            return replace(_status)
    return _build(nice)


def _build(nice: bool) -> Status:
    global _ops
    if not enabled_by_env():
        _set("disabled", "NNWATCH_NATIVE=0")
        return status()
    if fcntl is None:
        _set("unavailable", f"not supported on {sys.platform}")
        return status()
    cxx = compiler()
    if cxx is None:
        _set("unavailable", "no C++ compiler found (install g++ or set CXX)")
        return status()
    path: Path | None = None
    try:
        path = library_path(cxx)
        seconds = _ensure_built(cxx, path, nice)
        with _lock:
            if _ops is None:
                try:
                    torch.ops.load_library(str(path))
                except Exception:  # noqa: BLE001 - a damaged cached file: build it again, once
                    if seconds is not None:
                        raise
                    seconds = _ensure_built(cxx, path, nice, damaged=True)
                    torch.ops.load_library(str(path))
                _ops = torch.ops.nnwatch
        _set("ready", "", path, seconds)
        return status()
    except Exception as exc:  # noqa: BLE001 - any failure means "use torch ops"
        _set("unavailable", str(exc) or type(exc).__name__, path)
        return status()


def start() -> None:
    """Build and load in a background daemon thread (at most once per process); returns at once.

    The outcome is logged once: at debug level when ready, at info level when unavailable.
    """
    global _thread
    with _lock:
        if _thread is not None or _status.state != "idle":
            return
        _status.state = "building"
        _thread = threading.Thread(target=_background, name="nnwatch-native", daemon=True)
        _thread.start()


def _background() -> None:
    st = _build(nice=True)
    if st.state == "ready":
        took = f"built in {st.build_seconds:.1f} s" if st.build_seconds is not None else "from the cache"
        log.debug("nnwatch: native CPU kernels ready (%s, %s)", took, st.path)
    else:
        log.info("nnwatch: native CPU kernels %s (%s); CPU statistics use torch ops, which cost more per tensor",
                 st.state, st.reason)


def wait(timeout: float | None = None) -> Status:
    """Wait for a build started by ``start()`` (for tests and tools); returns the status."""
    t = _thread
    if t is not None:
        t.join(timeout)
    return status()


def register(sub: Any) -> None:
    """``nnwatch native``: build the kernels now and say where they are."""
    p = sub.add_parser("native", help="build the optional C++ CPU statistics kernels into the cache now")
    p.set_defaults(func=_cli)


def _cli(args: Any) -> int:
    st = build()
    if st.state == "ready":
        took = f"built in {st.build_seconds:.1f} s" if st.build_seconds is not None else "already built"
        print(f"native kernels ready: {st.path} ({took})")
        return 0
    print(f"native kernels {st.state}: {st.reason}", file=sys.stderr)
    return 1


__all__ = ["Status", "kernels", "status", "build", "start", "wait", "cache_dir", "compiler", "library_path"]
