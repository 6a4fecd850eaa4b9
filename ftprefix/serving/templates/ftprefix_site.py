"""Make the serving virtualenv importable inside Triton's python backend stub.

The stub embeds the interpreter it was linked with and ignores PYTHONPATH, so the server passes the
virtualenv's site directories in FTPREFIX_SITE_DIRS. They go first on sys.path (ahead of the base
interpreter's site-packages) and their .pth files are processed, which makes an editable install of
ftprefix importable. Without the variable (e.g. in the GPU image) nothing changes.
"""

import os
import site
import sys


def _add_site_dirs() -> None:
    dirs = [d for d in os.environ.get("FTPREFIX_SITE_DIRS", "").split(os.pathsep) if d]
    for directory in reversed(dirs):
        before = list(sys.path)
        site.addsitedir(directory)
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + before


_add_site_dirs()
