"""The image builder's contact with the host: ImageError, tools, root and commands.

Every module of ``localcluster.images`` that needs a host tool, root or a command run goes
through here, so each failure is one ``ImageError`` saying what to do (``apt-get install``,
run as root, the last lines of the command's output).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

Out = Callable[[str], None]


class ImageError(RuntimeError):
    """A build or import could not run; the message is one line saying what to do."""


def need_root() -> None:
    if os.geteuid() != 0:
        raise ImageError("building images needs root (mmdebstrap, overlayfs mounts, chroot): "
                         "run `python -m localcluster images build` as root")


def need_tool(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise ImageError(f"{tool} is not installed: apt-get install {package}")
    return found


def run(cmd: Sequence[str | os.PathLike[str]], what: str, **kw: Any) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-30:])
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
