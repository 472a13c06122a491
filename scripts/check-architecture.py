#!/usr/bin/env python3
"""Fails when the code's dependency graph stops being the architecture.

Three checks, each printing what it found:
  1. crates: the workspace crates' dependency graph (normal, build and dev dependencies on
     each other) has no cycle;
  2. docs: the crate graph written in docs/architecture.md (the block between the
     `crate-graph` markers, one `crate -> dep, dep` line per crate) is exactly Cargo.toml's;
  3. modules: inside every crate, the top-level modules (the first path component under src/)
     import each other one way only. An import is a `crate::name` path in non-test code (a
     file's text after its first `#[cfg(test)]`, and files named tests.rs or testing.rs, are
     test code), including `use crate::{a, b::c}` groups.

  scripts/check-architecture.py            exits 1 on any violation
"""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workspace():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    meta = json.loads(out)
    members = {p["name"]: p for p in meta["packages"]}
    graph = {
        name: sorted({d["name"] for d in p["dependencies"] if d["name"] in members} - {name})
        for name, p in members.items()
    }
    dirs = {name: Path(p["manifest_path"]).parent for name, p in members.items()}
    return graph, dirs


def cycles(graph):
    """Strongly connected groups of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def module_graph(src):
    graph = {}
    for path in sorted(src.rglob("*.rs")):
        parts = path.relative_to(src).parts
        if parts[0] == "bin" or path.name in ("tests.rs", "testing.rs"):
            continue
        top = parts[0][:-3] if len(parts) == 1 else parts[0]
        if top in ("lib", "main"):
            continue
        text = path.read_text(errors="replace")
        # `#[cfg(test)] mod tests;` only declares a test file; an inline test module (or any
        # other test-only item) starts the file's test code.
        text = re.sub(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))? )?mod [a-z_0-9]+;", "", text)
        text = text.split("#[cfg(test)]")[0]
        text = re.sub(r"//.*", "", text)
        refs = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text, re.S):
            refs |= set(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        graph.setdefault(top, set()).update(refs - {top})
    names = set(graph)
    return {m: sorted(r for r in refs if r in names) for m, refs in graph.items()}


def documented_graph():
    doc = ROOT / "docs" / "architecture.md"
    text = doc.read_text()
    block = re.search(r"<!-- crate-graph -->\n```text\n(.*?)```\n<!-- /crate-graph -->", text, re.S)
    if not block:
        return None
    graph = {}
    for line in block.group(1).splitlines():
        if "->" not in line:
            continue
        name, deps = (s.strip() for s in line.split("->", 1))
        graph[name] = sorted(d.strip() for d in deps.split(",") if d.strip() and d.strip() != "(none)")
    return graph


def main():
    failed = False
    graph, dirs = workspace()
    for group in cycles(graph):
        print(f"crates: cycle among {', '.join(group)}")
        failed = True
    print(f"crates: {len(graph)} crates, " + "; ".join(f"{n} -> {', '.join(d) or '(none)'}" for n, d in sorted(graph.items())))

    documented = documented_graph()
    if documented is None:
        print("docs: docs/architecture.md has no crate-graph block")
        failed = True
    elif documented != graph:
        for name in sorted(set(graph) | set(documented)):
            if graph.get(name) != documented.get(name):
                print(f"docs: {name}: Cargo.toml says {graph.get(name)}, docs/architecture.md says {documented.get(name)}")
        failed = True
    else:
        print("docs: docs/architecture.md's crate graph matches Cargo.toml")

    for name, path in sorted(dirs.items()):
        src = path / "src"
        if not src.is_dir():
            continue
        modules = module_graph(src)
        groups = cycles(modules)
        for group in groups:
            both = [f"{a}<->{b}" for a in group for b in modules.get(a, ()) if b in group and a in modules.get(b, ()) and a < b]
            print(f"modules: {name}: cycle among {', '.join(group)}" + (f" (two-way: {', '.join(both)})" if both else ""))
            failed = True
        if not groups:
            print(f"modules: {name}: {len(modules)} top-level modules, no cycle")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
