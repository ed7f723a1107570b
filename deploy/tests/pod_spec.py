#!/usr/bin/env python3
"""Print parts of a rendered Pod template as shell-safe lines, for .ci/pod-emulation.

Usage: pod_spec.py RENDERED.yaml WORKLOAD_NAME

Prints `KEY=VALUE` lines (VALUE shell-quoted) that `eval` turns into variables:
  size_limit     the podcache volume's sizeLimit (as given, e.g. 40Mi)
  sidecar_env    the sidecar's environment from its ConfigMap(s), as `export K=V; ...`
  generator      the script (args[0]) of the container named "generator", if any
  app_args       the args of the container named "app", if any, one shell word each
  app_ready_path the httpGet path of the app container's readinessProbe, if any
  args_NAME      the command and args of every container NAME, one shell word each
"""

import shlex
import sys

import yaml


def main():
    path, name = sys.argv[1], sys.argv[2]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    cms = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    work = next(d for d in docs if d["metadata"]["name"] == name and d["kind"] in ("Deployment", "Job"))
    spec = work["spec"]["template"]["spec"]
    side = next(c for c in spec["initContainers"] if c["name"] == "podcache")
    env = {}
    for ef in side.get("envFrom") or []:
        env.update(cms[ef["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in side.get("env") or [] if "value" in e})
    vol = next(v for v in spec["volumes"] if v["name"] == "podcache")
    out = {
        "size_limit": vol["emptyDir"]["sizeLimit"],
        "sidecar_env": "; ".join(f"export {k}={shlex.quote(str(v))}" for k, v in sorted(env.items())),
    }
    for c in spec["containers"]:
        words = (c.get("command") or []) + (c.get("args") or [])
        out[f"args_{c['name'].replace('-', '_')}"] = " ".join(shlex.quote(a) for a in words)
        if c["name"] == "generator":
            out["generator"] = c["args"][0]
        if c["name"] == "app":
            out["app_args"] = " ".join(shlex.quote(a) for a in c.get("args") or [])
            probe = (c.get("readinessProbe") or {}).get("httpGet") or {}
            out["app_ready_path"] = probe.get("path", "")
    for k, v in out.items():
        print(f"{k}={shlex.quote(v)}")


if __name__ == "__main__":
    main()
