#!/usr/bin/env python3
"""Fails if modules of src/engine import each other in a cycle.

Each top-level module of the engine (a file, or a folder with its mod.rs)
is a node; `super::X` or `crate::engine::X` outside tests is an edge to X.
The engine's modules are layered (see src/engine/mod.rs): a cycle means a
component reaches back into one built on top of it.

    python3 scripts/module_cycles.py [src/engine]
"""
import os
import re
import sys


def edges(root):
    graph = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[: -len(".rs")].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            node = parts[0] if parts else "mod"
            source = open(path, encoding="utf-8").read()
            source = source.split("#[cfg(test)]\nmod tests", 1)[0]
            # In a folder's files, `super::` is the folder itself.
            prefix = r"(?:super::super|crate::engine)" if len(parts) > 1 else r"(?:super|crate::engine)"
            found = {m.group(1) for m in re.finditer(prefix + r"::(\w+)", source)}
            graph.setdefault(node, set()).update(found - {node})
    return {node: deps & graph.keys() for node, deps in graph.items()}


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src/engine"
    graph = edges(root)
    found = cycles(graph)
    for component in found:
        print(f"modules of {root} import each other in a cycle: {', '.join(component)}")
        for node in component:
            print(f"  {node} -> {', '.join(sorted(graph[node] & set(component)))}")
    if found:
        print("move what they share into a module below both (see src/engine/mod.rs)")
        return 1
    print(f"{len(graph)} modules of {root}, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
