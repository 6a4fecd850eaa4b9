"""The servers' limit of open files: every connection holds one.

Linux starts processes with a soft limit of 1024 open files (select()'s old bound), under a hard
limit often 500 times that (systemd's and Docker's defaults: 1024:524288). At the soft limit the
gateway does not refuse connections: gRPC's core, needing a file for its own work then, aborts the
whole process (`Failed to open /dev/urandom`), so 1,200 clients at once ended a gateway started
from a shell. `ftprefix openai` and `ftprefix serve` therefore raise their soft limit, as far as
the hard limit allows, to OPEN_FILES_WANTED (vLLM's API server does the same: `set_ulimit` in
vllm/utils), before they start anything: their workers, Triton and its processes inherit it.
"""

from __future__ import annotations

import contextlib

# enough for tens of thousands of connections; not the hard limit itself (often 2^20), which some
# programs spawning children walk through, closing every descriptor one by one
OPEN_FILES_WANTED = 65536
# below this, a burst of connections (a benchmark at a concurrency of 1,000) can reach the limit
OPEN_FILES_LOW = 4096


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> int | None:
    """Raise this process's soft limit of open files towards `wanted`, within its hard limit.
    Returns the soft limit now; None where the platform has none (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        # macOS refuses more than its kern.maxfilesperproc even under an unlimited hard limit
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files_note(command: str) -> str | None:
    """Raise the limit (raise_open_files_limit); a line for the operator where it stays low."""
    limit = raise_open_files_limit()
    if limit is None or limit >= OPEN_FILES_LOW:
        return None
    return (
        f"{command}: warning: at most {limit} open files (the hard limit, `ulimit -Hn`), one per "
        f"connection: more clients at once than about that make the server fail; raise the hard "
        f"limit (compose: `ulimits: nofile`; systemd: LimitNOFILE)"
    )
