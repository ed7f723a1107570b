#!/usr/bin/env python3
"""podcache's own rules for rendered manifests (run by .ci/deploy-check).

Usage: check_pods.py RENDERED.yaml...

For every Pod template (Deployment, StatefulSet, DaemonSet, Job, CronJob) that has the podcache
sidecar, checks what schema validation and generic policy checks cannot know:

  - the sidecar is a native sidecar (initContainers, restartPolicy: Always) with a startupProbe
    on /readyz of the ops port 7071, a readinessProbe on /readyz and a livenessProbe on /healthz;
  - the volume "podcache" is an emptyDir with medium Memory and a sizeLimit;
  - the sidecar is non-root with a read-only root filesystem, and the Pod has an fsGroup;
  - every other container that mounts the volume mounts it readOnly: true, unless the Pod
    annotation podcache.io/writers names it (a container that is the writer of its own file);
  - the sizing rules of deploy/README.md for the tables and rings configured in
    PODCACHE_TABLES / PODCACHE_RINGS: sizeLimit >= the files + the largest file again (room to
    replace it), the sidecar's memory limit >= that + 32 MiB for the process;
  - the ops port 7071 is named podcache-ops (scraped by annotations or a PodMonitor).

Prints one line per check ("ok" or "FAILED: why") and a final count line
"checks: N passed, M failed"; exits 1 if any failed.
"""

import re
import sys

import yaml

SIDECAR = "podcache"
VOLUME = "podcache"
OPS_PORT = 7071
UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
         "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
         "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
K8S_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}


def podcache_bytes(text):
    """Bytes of a size as `podcache serve` parses it: N, Ki/Mi/Gi/Ti (also KiB/MiB/GiB/TiB) or
    k/M/G/T (powers of 1000, as in Kubernetes)."""
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|GiB|TiB|Ki|Mi|Gi|Ti|k|M|G|T|B)?", text.strip())
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) * UNITS[m.group(2) or ""]


def k8s_bytes(text):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", str(text).strip())
    if not m:
        raise ValueError(f"bad quantity {text!r}")
    return int(m.group(1)) * K8S_UNITS[m.group(2) or ""]


def file_sizes(env):
    """Upper bounds of the file sizes of PODCACHE_TABLES (NAME=ITEMS:BYTES) and PODCACHE_RINGS
    (NAME=BYTES[:MAX_MESSAGE]), by deploy/README.md's rules: a table is at most
    BYTES + 11 x ITEMS + 16 KiB, a ring is BYTES + 4 KiB."""
    sizes = []
    for spec in filter(None, (s.strip() for s in env.get("PODCACHE_TABLES", "").split(","))):
        _name, rest = spec.split("=", 1)
        items, size = rest.split(":", 1)
        sizes.append(podcache_bytes(size) + 11 * podcache_bytes(items) + (16 << 10))
    for spec in filter(None, (s.strip() for s in env.get("PODCACHE_RINGS", "").split(","))):
        _name, rest = spec.split("=", 1)
        sizes.append(podcache_bytes(rest.split(":", 1)[0]) + (4 << 10))
    return sizes


def pod_spec(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec.get("template")
    if kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
    return None


class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, why=""):
        if ok:
            self.passed += 1
            print(f"  ok      {name}")
        else:
            self.failed += 1
            print(f"  FAILED  {name}: {why}")


def probe_is(probe, path):
    get = (probe or {}).get("httpGet") or {}
    return get.get("path") == path and get.get("port") in (OPS_PORT, "podcache-ops")


def check_file(path, c):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    configmaps = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("data") or {}
                  for d in docs if d.get("kind") == "ConfigMap"}
    pods = 0
    for doc in docs:
        template = pod_spec(doc)
        if not template:
            continue
        spec = template.get("spec") or {}
        sidecars = [x for x in spec.get("initContainers") or [] if x.get("name") == SIDECAR]
        if not sidecars:
            continue
        pods += 1
        sc = sidecars[0]
        what = f"{path.split('/')[-1]}: {doc['kind']}/{doc['metadata']['name']}"
        meta = template.get("metadata") or {}
        ann = meta.get("annotations") or {}

        c.check(f"{what}: sidecar is native (restartPolicy: Always)", sc.get("restartPolicy") == "Always",
                f"restartPolicy is {sc.get('restartPolicy')!r}")
        c.check(f"{what}: startupProbe on /readyz:7071", probe_is(sc.get("startupProbe"), "/readyz"),
                f"startupProbe is {sc.get('startupProbe')!r}")
        c.check(f"{what}: readinessProbe on /readyz:7071", probe_is(sc.get("readinessProbe"), "/readyz"),
                f"readinessProbe is {sc.get('readinessProbe')!r}")
        c.check(f"{what}: livenessProbe on /healthz:7071", probe_is(sc.get("livenessProbe"), "/healthz"),
                f"livenessProbe is {sc.get('livenessProbe')!r}")

        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        empty = (volumes.get(VOLUME) or {}).get("emptyDir")
        c.check(f"{what}: volume is emptyDir medium Memory with sizeLimit",
                bool(empty) and empty.get("medium") == "Memory" and "sizeLimit" in empty,
                f"volume {VOLUME} is {volumes.get(VOLUME)!r}")

        ssc = sc.get("securityContext") or {}
        psc = spec.get("securityContext") or {}
        c.check(f"{what}: sidecar non-root, read-only root fs, no privilege escalation",
                (ssc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True
                and ssc.get("readOnlyRootFilesystem") is True and ssc.get("allowPrivilegeEscalation") is False,
                f"securityContext is {ssc!r}")
        c.check(f"{what}: Pod has an fsGroup", isinstance(psc.get("fsGroup"), int), f"Pod securityContext is {psc!r}")

        writers = {w.strip() for w in ann.get("podcache.io/writers", "").split(",") if w.strip()}
        readers = 0
        bad = []
        for ctr in (spec.get("containers") or []) + [x for x in spec.get("initContainers") or [] if x is not sc]:
            for m in ctr.get("volumeMounts") or []:
                if m.get("name") != VOLUME:
                    continue
                if ctr["name"] in writers:
                    continue
                readers += 1
                if m.get("readOnly") is not True:
                    bad.append(ctr["name"])
        c.check(f"{what}: {readers} reader mount(s) of the volume are readOnly", not bad,
                f"containers {bad} mount {VOLUME} writable (list real writers in podcache.io/writers)")

        # The component leaves the Pod's scrape annotations alone (they may be the app's): the
        # sidecar is scraped through them when they name 7071, else through a PodMonitor on the
        # named port.
        ops = [p for p in sc.get("ports") or [] if p.get("containerPort") == OPS_PORT]
        c.check(f"{what}: ops port 7071 named podcache-ops (for a PodMonitor)",
                any(p.get("name") == "podcache-ops" for p in ops), f"sidecar ports are {sc.get('ports')!r}")

        env = {e["name"]: e.get("value", "") for e in sc.get("env") or [] if "value" in e}
        for ef in sc.get("envFrom") or []:
            ref = (ef.get("configMapRef") or {}).get("name")
            if ref:
                data = configmaps.get((doc["metadata"].get("namespace"), ref))
                c.check(f"{what}: ConfigMap {ref} is in the rendered output", data is not None,
                        "envFrom names a ConfigMap the kustomization does not generate")
                env = {**(data or {}), **env}
        try:
            sizes = file_sizes(env)
            ok_syntax, why = True, ""
        except ValueError as e:
            sizes, ok_syntax, why = [], False, str(e)
        c.check(f"{what}: PODCACHE_TABLES/PODCACHE_RINGS parse", ok_syntax, why)
        # Room for every file plus a replacement of the largest (a layout change).
        need = sum(sizes) + max(sizes, default=0)
        mib = 1 << 20
        size_limit = k8s_bytes(empty.get("sizeLimit", 0)) if empty else 0
        c.check(f"{what}: sizeLimit {size_limit / mib:.1f} MiB >= files + largest {need / mib:.1f} MiB",
                size_limit >= need, "the volume is too small for the files and a replacement of the largest")
        mem = k8s_bytes(((sc.get("resources") or {}).get("limits") or {}).get("memory", 0))
        c.check(f"{what}: sidecar memory limit {mem / mib:.1f} MiB >= files + largest + 32 MiB "
                f"{(need + 32 * mib) / mib:.1f} MiB", mem >= need + 32 * mib,
                "tmpfs pages are charged to the sidecar, which preallocates them: raise limits.memory")
    c.check(f"{path.split('/')[-1]}: has at least one Pod with the podcache sidecar", pods > 0,
            "no workload with the podcache sidecar found")


def main():
    c = Checker()
    for path in sys.argv[1:]:
        check_file(path, c)
    print(f"checks: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
