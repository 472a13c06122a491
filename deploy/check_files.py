"""Consistency checks of the compose stack and the Grafana dashboard that no schema can make:
files the compose file mounts or builds from exist, services it depends on exist, images are
pinned; the dashboard has unique panel ids, non-overlapping panels, and every query names the
dashboard's datasource variable. Prints each problem; exits 1 if any.

    python deploy/check_files.py ROOT
"""

import json
import sys
from pathlib import Path

import yaml


def compose_problems(root: Path) -> list[str]:
    path = root / "docker" / "compose.yaml"
    base = path.parent
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    problems = []
    built_images = {s.get("image") for s in services.values() if "build" in s}
    host_ports = {}
    for name, service in services.items():
        where = f"compose service {name}"
        build = service.get("build")
        if build:
            context = base / build.get("context", ".")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{where}: build file {dockerfile} does not exist")
        image = service.get("image")
        if not image and not build:
            problems.append(f"{where}: neither image nor build")
        elif image and not build and image not in built_images:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if tag in ("", "latest"):
                problems.append(f"{where}: image {image} is not pinned to a version")
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                if not (base / source).exists():
                    problems.append(f"{where}: mounts {source}, which does not exist")
            elif source not in compose.get("volumes", {}):
                problems.append(f"{where}: volume {source} is not declared under volumes")
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else depends.keys():
            if dependency not in services:
                problems.append(f"{where}: depends on unknown service {dependency}")
        for port in service.get("ports", []):
            host = str(port).split(":")[0]
            if host in host_ports:
                problems.append(f"{where}: host port {host} also used by {host_ports[host]}")
            host_ports[host] = name
    return problems


def dashboard_problems(root: Path) -> list[str]:
    path = root / "docker" / "grafana" / "dashboards" / "sluice.json"
    dashboard = json.loads(path.read_text())
    problems = []
    panels = []

    def walk(items):
        for panel in items:
            panels.append(panel)
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    ids = [p.get("id") for p in panels]
    for duplicate in {i for i in ids if ids.count(i) > 1}:
        problems.append(f"dashboard: panel id {duplicate} is used more than once")
    cells = {}
    for panel in panels:
        title = panel.get("title", "?")
        grid = panel.get("gridPos")
        if not grid:
            problems.append(f"dashboard: panel {title!r} has no gridPos")
            continue
        if grid["x"] + grid["w"] > 24:
            problems.append(f"dashboard: panel {title!r} is wider than the 24 columns")
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in cells:
                    problems.append(f"dashboard: panels {cells[(x, y)]!r} and {title!r} overlap")
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"dashboard: panel {title!r} has no query")
        for target in targets:
            if not target.get("expr"):
                problems.append(f"dashboard: panel {title!r} has a target without expr")
            if target.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"dashboard: panel {title!r} does not use the $datasource variable")
    return problems


def dashboard_rules(root: Path, out: Path) -> None:
    """Writes the dashboard's expressions as recording rules, for `promtool check rules`."""
    dashboard = json.loads((root / "docker" / "grafana" / "dashboards" / "sluice.json").read_text())
    rules = []

    def walk(items):
        for panel in items:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in (("$__rate_interval", "1m"), ("${model}", ".*"), ("$model", ".*")):
                    expr = expr.replace(variable, value)
                rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr})
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    if len(sys.argv) > 3 and sys.argv[2] == "--dashboard-rules":
        dashboard_rules(root, Path(sys.argv[3]))
        sys.exit(0)
    found = compose_problems(root) + dashboard_problems(root)
    for problem in found:
        print(problem)
    sys.exit(1 if found else 0)
