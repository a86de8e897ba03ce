"""What GitOps tools make of a ModelService status: kstatus (Flux) and the Argo CD health Lua.

``kstatus`` runs the helper built from sigs.k8s.io/cli-utils (``localcluster/go/kstatus``)
on objects; ``argocd_health`` runs ``gitops/argocd/health-modelservice.lua`` in lupa, as Argo CD
runs it in gopher-lua (global ``obj``, returns ``{status, message}``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from localcluster import build, paths

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "gitops" / "argocd" / "health-modelservice.lua"


def kstatus(objs: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """kstatus's verdict per object: ``{"name", "namespace", "status", "message"}``."""
    if "kstatus" in build.missing_binaries():
        pytest.fail("the kstatus helper is not built; run: python -m localcluster build kstatus",
                    pytrace=False)
    proc = subprocess.run([str(paths.binary("kstatus"))], input=json.dumps(list(objs)),
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def argocd_health(obj: Mapping[str, Any]) -> dict[str, str]:
    """Argo CD's health verdict for ``obj``: ``{"status", "message"}``."""
    lupa = pytest.importorskip("lupa")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(v: Any) -> Any:
        if isinstance(v, Mapping):
            return lua.table_from({k: to_lua(x) for k, x in v.items()})
        if isinstance(v, list):
            return lua.table_from([to_lua(x) for x in v])
        return v

    fn = lua.eval("function(obj) " + LUA.read_text() + " end")
    result = fn(to_lua(obj))
    return {"status": result["status"], "message": result["message"]}
