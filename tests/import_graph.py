"""The project's import graph, and the check that its imports only go down.

    .venv/bin/python tests/import_graph.py          # prints the graph; exit 1 on an upward edge or a cycle

Every module's imports are read from its source (top-level and inside functions alike),
so a lazy import counts as an edge. The layers, top to bottom:

    scripts   train.py, test_widerface.py, test_fddb.py, detect.py, convert_to_onnx.py,
              curve/, fddb_evaluate/ (and bench/, tests/ above them)
    models    the network, the detection pipeline (models/detector.py), the ONNX export,
              validation during training (models/validation.py)
    layers    priors, the Detect stages, the loss
    widerface_evaluate   evaluation.py and the validation AP of detections in memory: it
              scores detections and needs no model, so it sits below them
    data      configs, labels, the training dataset
    utils.train   train.py's pieces below the model: its schedule, --save_folder record,
              resume logic and log file (models/training.py, its engine, is above them)
    utils     everything else, importing nothing above it

A module may import its own layer or any layer below; the modules must not import in a circle.
"""
import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ('utils', 'utils.train', 'data', 'widerface_evaluate', 'layers', 'models', 'scripts', 'bench', 'tests')
_PYX_IMPORT = re.compile(r'^\s*(?:from\s+([\w.]+)\s+import\s|import\s+([\w.]+))', re.M)


def layer_of(module):
    """The layer of a dotted module name ('utils.nms.cpu_nms' -> 'utils', 'utils.train.schedule' ->
    'utils.train', 'detect' -> 'scripts'): a sub-package that is a layer of its own, else the top package."""
    parts = module.split('.')
    if '.'.join(parts[:2]) in LAYERS:
        return '.'.join(parts[:2])
    return parts[0] if parts[0] in LAYERS else 'scripts'


def project_modules():
    """{dotted name: path} of every module and Cython source under the repository."""
    modules = {}
    for path in ROOT.rglob('*'):
        rel = path.relative_to(ROOT)
        if path.suffix not in ('.py', '.pyx') or any(p.startswith('.') or p == 'build' for p in rel.parts):
            continue
        if rel.name == 'setup.py':  # build scripts, run by setuptools, not imported
            continue
        parts = list(rel.with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        modules['.'.join(parts)] = path
    return modules


def _resolve(name, modules):
    """The project module an imported name lands in (the longest known prefix), or None."""
    parts = name.split('.')
    for n in range(len(parts), 0, -1):
        candidate = '.'.join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def imports_of(module, path, modules):
    """The project modules that module imports, anywhere in its source."""
    text = path.read_text()
    names = []
    if path.suffix == '.pyx':  # Cython: only its Python-level imports (cimports are C)
        names = [a or b for a, b in _PYX_IMPORT.findall(text)]
    else:
        package = module if path.name == '__init__.py' else module.rpartition('.')[0]
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:  # relative: from the package, up level - 1 packages
                    anchor = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                    base = '.'.join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule pkg.sub when there is one.
                names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                          for alias in node.names]
    found = {_resolve(n, modules) for n in names}
    return sorted(m for m in found if m is not None and m != module)


def import_graph():
    modules = project_modules()
    return {m: imports_of(m, p, modules) for m, p in sorted(modules.items())}


def upward_edges(graph):
    """[(importer, imported)] where the imported module's layer is above the importer's."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [(a, b) for a, targets in graph.items() for b in targets if rank[layer_of(b)] > rank[layer_of(a)]]


def cycles(graph):
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in graph:
        if v not in index:
            visit(v)
    return groups


def main():
    graph = import_graph()
    layer_edges = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            if layer_of(a) != layer_of(b):
                layer_edges[layer_of(a)].add(layer_of(b))
    print("layers (top first) and the layers each imports:")
    for layer in reversed(LAYERS):
        print(f"  {layer:20s} -> {', '.join(sorted(layer_edges[layer], key=LAYERS.index, reverse=True)) or '-'}")
    print("\nmodules below the scripts and what they import from the project:")
    for a, targets in graph.items():
        if layer_of(a) not in ('scripts', 'bench', 'tests'):
            print(f"  {a:36s} -> {', '.join(targets) or '-'}")
    up, loops = upward_edges(graph), cycles(graph)
    for a, b in up:
        print(f"UPWARD: {a} ({layer_of(a)}) imports {b} ({layer_of(b)})")
    for group in loops:
        print(f"CYCLE: {' <-> '.join(group)}")
    print(f"\n{len(graph)} modules, {sum(map(len, graph.values()))} imports: "
          f"{len(up)} upward, {len(loops)} cycles")
    return 1 if up or loops else 0


if __name__ == '__main__':
    raise SystemExit(main())
