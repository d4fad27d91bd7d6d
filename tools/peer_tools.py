"""The C programs of the bench's "peers" section, built on first use, and the outside tools.

    wsload            tools/wsload.c, the WebSocket load generator (cc -O2 -D_GNU_SOURCE)
    anchor_libsoup_c  tools/anchor_libsoup_c.c, libsoup 3's server in C (needs
                      ``pkg-config libsoup-3.0``: Debian's libsoup-3.0-dev)
    wrk               the HTTP load generator (Debian's wrk), found on PATH

Binaries go to build/bench-tools/ (git-ignored), rebuilt when their source is newer. Each
function returns ``(path, "")``, or ``("", why)`` when the program cannot be had: the bench
skips what needs it and prints why. Nothing is installed here; ``make bench-deps`` does that.
"""

import os
import shutil
import subprocess
from typing import List, Tuple

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
BUILD_DIR = os.path.join(ROOT, "build", "bench-tools")
WSLOAD_SOURCE = os.path.join(TOOLS, "wsload.c")
ANCHOR_SOURCE = os.path.join(TOOLS, "anchor_libsoup_c.c")
ANCHOR_BINARY = os.path.join(BUILD_DIR, "anchor_libsoup_c")
LIBSOUP_PKG = "libsoup-3.0"
BUILD_TIMEOUT_S = 120.0
INSTALL_HINT = "make bench-deps (apt-get install gcc libsoup-3.0-dev wrk)"


def _compiler() -> str:
    return shutil.which("cc") or shutil.which("gcc") or ""


def _last_line(text: str) -> str:
    lines = [t for t in text.splitlines() if t.strip()]
    return lines[-1].strip() if lines else "no output"


def _build(source: str, binary: str, cflags: List[str], libs: List[str] = ()) -> Tuple[str, str]:
    """Compile ``source`` into ``binary`` unless it is up to date (``libs`` after the source,
    where the linker wants them)."""
    try:
        if os.path.getmtime(binary) >= os.path.getmtime(source):
            return binary, ""
    except OSError:
        pass
    cc = _compiler()
    if not cc:
        return "", "no C compiler (cc) on PATH; " + INSTALL_HINT
    os.makedirs(os.path.dirname(binary), exist_ok=True)
    # Into a temporary name first, so that a failed or interrupted build leaves no binary
    # that would look up to date next time.
    partial = binary + ".part"
    cmd = [cc] + list(cflags) + ["-o", partial, source] + list(libs)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return "", "building %s: %s" % (os.path.basename(source), exc)
    if out.returncode != 0:
        return "", "building %s failed: %s" % (os.path.basename(source),
                                               _last_line(out.stderr + out.stdout))
    os.replace(partial, binary)
    return binary, ""


def build_wsload(build_dir: str = BUILD_DIR) -> Tuple[str, str]:
    """tools/wsload.c built with ``cc -O2 -D_GNU_SOURCE`` into ``build_dir``."""
    return _build(WSLOAD_SOURCE, os.path.join(build_dir, "wsload"), ["-O2", "-D_GNU_SOURCE"])


def libsoup_flags() -> Tuple[List[str], str]:
    """``pkg-config --cflags --libs libsoup-3.0`` split, or ``([], why)``."""
    if not shutil.which("pkg-config"):
        return [], "no pkg-config on PATH; " + INSTALL_HINT
    try:
        out = subprocess.run(["pkg-config", "--cflags", "--libs", LIBSOUP_PKG],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], "pkg-config: %s" % exc
    if out.returncode != 0:
        return [], "pkg-config finds no %s (Debian: libsoup-3.0-dev); %s" % (LIBSOUP_PKG,
                                                                             INSTALL_HINT)
    return out.stdout.split(), ""


def libsoup_version() -> str:
    try:
        out = subprocess.run(["pkg-config", "--modversion", LIBSOUP_PKG], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


def build_anchor(build_dir: str = BUILD_DIR) -> Tuple[str, str]:
    """tools/anchor_libsoup_c.c built against libsoup 3 (pkg-config) into ``build_dir``
    (bench_servers.py's libsoup-c runs the one in BUILD_DIR)."""
    flags, why = libsoup_flags()
    if why:
        return "", why
    return _build(ANCHOR_SOURCE, os.path.join(build_dir, "anchor_libsoup_c"), ["-O2"], flags)


def find_wrk() -> Tuple[str, str]:
    """wrk on PATH."""
    path = shutil.which("wrk")
    return (path, "") if path else ("", "no wrk on PATH (Debian package wrk); " + INSTALL_HINT)
