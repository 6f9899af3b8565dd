#!/usr/bin/env python3
"""Consistency checks of the deployment files that no off-the-shelf validator makes.

Called by scripts/validate-deploy.sh; each subcommand prints what it checked and exits
non-zero on the first class of problems it finds (all problems of that class are listed).

  deploy_checks.py dashboard DASHBOARD.json DATASOURCES.yml DASHBOARD_PROVIDER.yml
  deploy_checks.py compose docker-compose.yml NGINX.conf PROMETHEUS.yml
  deploy_checks.py rules-match ALERTS.yml PROMETHEUSRULE.yaml RULES_OUT.yml
  deploy_checks.py k8s-split RENDERED.yaml CORE_OUT.yaml      (CRDs listed and left out)
  deploy_checks.py k8s-refs RENDERED.yaml [--external-secret NAME …]

Needs PyYAML (a dependency of kubernetes-validate).
"""

import json
import re
import sys
from pathlib import Path

import yaml

# API groups of the custom resources the manifests use. kubernetes-validate has no schema for
# them offline; they are left out of its input and listed as skipped, never silently.
CRD_GROUPS = {
    "monitoring.coreos.com": "Prometheus Operator",
    "gateway.networking.k8s.io": "Gateway API",
}


class Problems:
    def __init__(self, what):
        self.what = what
        self.items = []

    def add(self, message):
        self.items.append(message)

    def check(self, condition, message):
        if not condition:
            self.add(message)

    def finish(self, summary):
        if self.items:
            print(f"FAIL {self.what}:")
            for item in self.items:
                print(f"  - {item}")
            sys.exit(1)
        print(f"ok   {self.what}: {summary}")


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def duration_seconds(text):
    """Seconds in a duration such as "20s", "1m30s", "45" (seconds)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


# ---------------------------------------------------------------------------------------------
# Grafana


def dashboard(dashboard_path, datasources_path, provider_path):
    problems = Problems(f"dashboard {dashboard_path}")
    with open(dashboard_path, encoding="utf-8") as f:
        board = json.load(f)
    sources = load_yaml(datasources_path)["datasources"]
    uids = {source["uid"]: source for source in sources}
    problems.check(len(uids) == len(sources), "datasource uids are not unique")
    prometheus_uids = {uid for uid, s in uids.items() if s.get("type") == "prometheus"}
    problems.check(prometheus_uids, f"{datasources_path} provisions no prometheus datasource")

    problems.check(board.get("uid"), "the dashboard needs a fixed uid")
    problems.check(board.get("title"), "the dashboard needs a title")
    ids = set()
    exprs = 0
    rows = 0
    panels = board.get("panels", [])
    for panel in panels:
        nested = panel.get("panels", []) if panel.get("type") == "row" else []
        for p in [panel, *nested]:
            title = p.get("title", f"panel {p.get('id')}")
            pid = p.get("id")
            problems.check(isinstance(pid, int), f"{title}: no numeric id")
            problems.check(pid not in ids, f"{title}: id {pid} used twice")
            ids.add(pid)
            grid = p.get("gridPos", {})
            problems.check(
                all(k in grid for k in ("h", "w", "x", "y")) and grid.get("x", 0) + grid.get("w", 0) <= 24,
                f"{title}: bad gridPos {grid}",
            )
            if p.get("type") == "row":
                rows += 1
                continue
            ds = p.get("datasource", {})
            problems.check(
                ds.get("uid") in prometheus_uids,
                f"{title}: datasource {ds} is not the provisioned one {sorted(prometheus_uids)}",
            )
            targets = p.get("targets", [])
            problems.check(targets, f"{title}: no query")
            refs = set()
            for t in targets:
                problems.check(t.get("expr", "").strip(), f"{title}: a target without expr")
                problems.check(t.get("refId") not in refs, f"{title}: refId {t.get('refId')} twice")
                refs.add(t.get("refId"))
                tds = t.get("datasource", ds)
                problems.check(
                    tds == ds or tds.get("uid") in prometheus_uids,
                    f"{title}: target datasource {tds}",
                )
                unknown = set(re.findall(r"\$\{?(\w+)", t.get("expr", ""))) - {
                    "__rate_interval",
                    "__interval",
                    "__range",
                    *[v["name"] for v in board.get("templating", {}).get("list", [])],
                }
                problems.check(not unknown, f"{title}: unknown variables {sorted(unknown)}")
                exprs += 1
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            problems.check(
                var.get("datasource", {}).get("uid") in prometheus_uids,
                f"variable {var.get('name')}: datasource {var.get('datasource')}",
            )
    provider = load_yaml(provider_path)
    paths = [p.get("options", {}).get("path") for p in provider.get("providers", [])]
    problems.check(
        any(paths), f"{provider_path}: no file provider with options.path"
    )
    problems.finish(
        f"{len(ids) - rows} panels in {rows} rows, {exprs} queries, all on datasource uid "
        f"{', '.join(sorted(prometheus_uids))}; provider path {', '.join(filter(None, paths))}"
    )


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def compose(compose_path, nginx_path, prometheus_path):
    problems = Problems(f"compose {compose_path}")
    root = Path(compose_path).resolve().parent
    spec = load_yaml(compose_path)
    services = spec.get("services", {})
    gateways = sorted(name for name in services if re.fullmatch(r"gateway-\d+", name))
    problems.check(len(gateways) >= 3, f"expected 3 gateway replicas, found {gateways}")

    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                problems.check(
                    (root / source).exists(), f"{name}: mounts {source}, which does not exist"
                )
        build = service.get("build")
        if isinstance(build, dict):
            dockerfile = root / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            problems.check(dockerfile.exists(), f"{name}: no {dockerfile}")

    node_ids = set()
    for name in gateways:
        service = services[name]
        env = service.get("environment", {})
        node_ids.add(env.get("GATEWAY_NODE_ID"))
        drain = duration_seconds(env.get("GATEWAY_DRAIN_TIMEOUT", "20s"))
        grace = duration_seconds(service.get("stop_grace_period", "10s"))
        problems.check(
            grace > drain,
            f"{name}: stop_grace_period {grace}s must be longer than the drain ({drain}s)",
        )
        problems.check(service.get("read_only") is True, f"{name}: read_only root filesystem")
        problems.check("ALL" in service.get("cap_drop", []), f"{name}: cap_drop ALL")
    problems.check(len(node_ids) == len(gateways), f"gateway node ids not distinct: {node_ids}")

    nginx = Path(nginx_path).read_text(encoding="utf-8")
    upstream = set(re.findall(r"^\s*server\s+([\w.-]+):8080\b", nginx, re.M))
    problems.check(
        upstream == set(gateways),
        f"{nginx_path} balances over {sorted(upstream)}, compose runs {gateways}",
    )
    problems.check(re.search(r"^\s*least_conn;", nginx, re.M), f"{nginx_path}: no least_conn")
    problems.check("proxy_set_header Upgrade" in nginx, f"{nginx_path}: no Upgrade header")
    problems.check(re.search(r"listen\s+443\s+ssl", nginx), f"{nginx_path}: no TLS on 443")

    prom = load_yaml(prometheus_path)
    targets = set()
    for job in prom.get("scrape_configs", []):
        if job.get("job_name") == "gateway":
            for static in job.get("static_configs", []):
                targets.update(static.get("targets", []))
    problems.check(
        targets == {f"{g}:9090" for g in gateways},
        f"{prometheus_path} scrapes {sorted(targets)}, compose runs {gateways} (admin :9090)",
    )
    problems.finish(
        f"{len(gateways)} replicas ({', '.join(gateways)}) behind the balancer and scraped by "
        f"Prometheus; mounted files exist; stop grace > drain; read-only, no capabilities"
    )


# ---------------------------------------------------------------------------------------------
# Alert rules: deploy/prometheus/alerts.yml and the PrometheusRule


def rules_match(alerts_path, rule_path, out_path):
    problems = Problems(f"{rule_path} against {alerts_path}")
    alerts = load_yaml(alerts_path)
    rule = load_yaml(rule_path)
    problems.check(rule.get("kind") == "PrometheusRule", "not a PrometheusRule")
    groups = rule.get("spec", {}).get("groups")
    problems.check(
        groups == alerts.get("groups"),
        "the PrometheusRule's groups differ from alerts.yml (edit both the same way)",
    )
    with open(out_path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": groups}, f)
    n = sum(len(g.get("rules", [])) for g in groups or [])
    problems.finish(f"same {n} rules")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def group_of(doc):
    api = doc.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def k8s_split(rendered_path, core_out):
    docs = load_all(rendered_path)
    core, skipped = [], []
    for doc in docs:
        group = group_of(doc)
        if group in CRD_GROUPS:
            skipped.append(doc)
        else:
            core.append(doc)
    with open(core_out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    for doc in skipped:
        print(
            f"skip {doc['kind']}/{doc['metadata']['name']} ({doc['apiVersion']}): a "
            f"{CRD_GROUPS[group_of(doc)]} custom resource, no schema offline; "
            f"checked by k8s-refs instead"
        )
    print(f"ok   split {rendered_path}: {len(core)} core resources to validate, {len(skipped)} skipped")


def k8s_refs(rendered_path, external_secrets):
    problems = Problems(f"references in {rendered_path}")
    docs = load_all(rendered_path)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind.get("Deployment", {})
    services = by_kind.get("Service", {})
    configmaps = by_kind.get("ConfigMap", {})
    secrets = set(by_kind.get("Secret", {})) | set(external_secrets)

    def matches(selector, labels):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    gateway = deployments.get("gateway")
    problems.check(gateway is not None, "no Deployment gateway")
    if gateway is None:
        problems.finish("")
    pod = gateway["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    problems.check(
        matches(gateway["spec"]["selector"]["matchLabels"], pod_labels),
        "Deployment selector does not match its pod labels",
    )
    problems.check("replicas" not in gateway["spec"], "Deployment sets replicas; the HPA owns them")
    container = next(c for c in spec["containers"] if c["name"] == "gateway")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}

    # Probes: readiness on /readyz and liveness on /healthz, both on the admin port.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        problems.check(
            get.get("path") == path and get.get("port") in ("admin", ports.get("admin")),
            f"{probe} must GET {path} on the admin port, is {get}",
        )

    # Shutdown: grace period longer than preStop delay plus the drain window.
    env = {}
    for ref in container.get("envFrom", []):
        name = ref.get("configMapRef", {}).get("name")
        if name:
            problems.check(name in configmaps, f"envFrom ConfigMap {name} is not rendered")
            env.update(configmaps.get(name, {}).get("data", {}))
    drain = duration_seconds(env.get("GATEWAY_DRAIN_TIMEOUT", "20s"))
    reconnect = duration_seconds(env.get("GATEWAY_DRAIN_RECONNECT_MAX", "5s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    problems.check(pre_stop > 0, "no preStop delay")
    problems.check(
        grace > pre_stop + drain,
        f"terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + drain {drain}s",
    )
    problems.check(reconnect < drain, "GATEWAY_DRAIN_RECONNECT_MAX must be under the drain timeout")

    # Hardening and resources.
    pod_sc = spec.get("securityContext", {})
    c_sc = container.get("securityContext", {})
    problems.check(pod_sc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    problems.check(c_sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    problems.check(c_sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    problems.check("ALL" in c_sc.get("capabilities", {}).get("drop", []), "capabilities drop ALL")
    res = container.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            problems.check(r in res.get(kind, {}), f"resources.{kind}.{r} missing")
    keys = {c.get("topologyKey") for c in spec.get("topologySpreadConstraints", [])}
    problems.check(
        {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys,
        f"topology spread over zones and hosts, found {sorted(keys)}",
    )

    # Secrets and ConfigMaps the pod uses exist (or are expected from outside).
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            problems.check(
                ref["name"] in secrets,
                f"env {e['name']} reads Secret {ref['name']}, which is neither rendered nor "
                f"declared external",
            )
            rendered = by_kind.get("Secret", {}).get(ref["name"])
            if rendered:
                problems.check(
                    ref["key"] in {**rendered.get("data", {}), **rendered.get("stringData", {})},
                    f"Secret {ref['name']} has no key {ref['key']}",
                )
    for volume in spec.get("volumes", []):
        name = volume.get("configMap", {}).get("name")
        if name:
            problems.check(name in configmaps, f"volume ConfigMap {name} is not rendered")

    # Service, PDB, HPA, Ingress, HTTPRoute, ServiceMonitor point at the right things.
    service = services.get("gateway", {})
    problems.check(matches(service.get("spec", {}).get("selector"), pod_labels), "Service selector")
    service_ports = {p["name"]: p for p in service.get("spec", {}).get("ports", [])}
    for p in service_ports.values():
        target = p.get("targetPort")
        problems.check(
            target in ports or target in ports.values(),
            f"Service port {p['name']} targets {target}, not a container port",
        )
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        problems.check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selector")
        problems.check("minAvailable" in pdb["spec"], "PDB minAvailable")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        problems.check(
            ref["kind"] == "Deployment" and ref["name"] in deployments, f"HPA target {ref}"
        )
        metrics = [m.get("resource", {}).get("name") for m in hpa["spec"].get("metrics", [])]
        problems.check("cpu" in metrics, "HPA scales on CPU")
        pdbs = list(by_kind.get("PodDisruptionBudget", {}).values())
        for pdb in pdbs:
            problems.check(
                hpa["spec"].get("minReplicas", 1) > pdb["spec"].get("minAvailable", 0),
                "HPA minReplicas must exceed the PDB's minAvailable, or drains block",
            )
    for ing in by_kind.get("Ingress", {}).values():
        annotations = ing["metadata"].get("annotations", {})
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = annotations.get(f"nginx.ingress.kubernetes.io/{key}", "0")
            problems.check(int(value) >= 3600, f"Ingress {key} {value} is too short for WebSockets")
        problems.check(ing["spec"].get("tls"), "Ingress without TLS")
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                problems.check(
                    backend["name"] in services
                    and backend["port"].get("name", backend["port"].get("number")) in
                    {**{n: n for n in service_ports}, **{p["port"]: p["port"] for p in service_ports.values()}},
                    f"Ingress path {path['path']} points at {backend}",
                )
    gateways = by_kind.get("Gateway", {})
    for route in by_kind.get("HTTPRoute", {}).values():
        for parent in route["spec"].get("parentRefs", []):
            gw = gateways.get(parent["name"])
            problems.check(gw is not None, f"HTTPRoute parent {parent['name']} is not rendered")
            if gw:
                listener = next(
                    (l for l in gw["spec"]["listeners"] if l["name"] == parent.get("sectionName")),
                    None,
                )
                problems.check(listener is not None, f"Gateway has no listener {parent}")
                if listener:
                    problems.check(listener["protocol"] == "HTTPS", "Gateway listener is not HTTPS")
                    problems.check(
                        listener.get("tls", {}).get("certificateRefs"), "Gateway listener without TLS"
                    )
        for rule in route["spec"].get("rules", []):
            for backend in rule.get("backendRefs", []):
                problems.check(
                    backend["name"] in services
                    and backend["port"] in {p["port"] for p in service_ports.values()},
                    f"HTTPRoute backend {backend} is not a Service port",
                )
            problems.check(
                rule.get("timeouts", {}).get("request") == "0s",
                "HTTPRoute rule must disable the request timeout for WebSockets",
            )
    for monitor in by_kind.get("ServiceMonitor", {}).values():
        job_label = monitor["spec"].get("jobLabel")
        job = (
            service.get("metadata", {}).get("labels", {}).get(job_label)
            if job_label
            else service.get("metadata", {}).get("name")
        )
        problems.check(
            job == "gateway",
            f"ServiceMonitor gives the job label {job!r}; the alerts and dashboard expect gateway",
        )
        selector = monitor["spec"]["selector"]["matchLabels"]
        problems.check(
            matches(selector, service.get("metadata", {}).get("labels", {})),
            f"ServiceMonitor selector {selector} does not match the Service's labels",
        )
        for endpoint in monitor["spec"].get("endpoints", []):
            problems.check(
                endpoint.get("port") in service_ports, f"ServiceMonitor port {endpoint.get('port')}"
            )
    problems.finish(
        f"{len(docs)} resources; selectors, ports, Secrets, ConfigMaps, probes, "
        f"grace {grace}s > preStop {pre_stop}s + drain {drain:g}s, hardening, spread, HPA/PDB"
    )


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    command, args = argv[1], argv[2:]
    if command == "dashboard":
        dashboard(*args)
    elif command == "compose":
        compose(*args)
    elif command == "rules-match":
        rules_match(*args)
    elif command == "k8s-split":
        k8s_split(*args)
    elif command == "k8s-refs":
        rendered, rest = args[0], args[1:]
        external = [rest[i + 1] for i in range(0, len(rest), 2) if rest[i] == "--external-secret"]
        k8s_refs(rendered, external)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
