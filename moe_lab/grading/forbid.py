"""The library's answers are off limits: an answer that calls what it was asked to write earns nothing.

Each source notebook lists, in `metadata.moe_lab.forbidden`, the dotted names that hold its answers
(`moe_lab.routing.top_k_gating`, and whatever calls it for you, e.g. `moe_lab.reference.moe_forward`).
Two guards, because either alone is easy to walk around:

    static    the answer cells' syntax: a name or attribute that resolves (through the notebook's
              imports) to a forbidden name, an import of one, or the bare string of one
              (`getattr(routing, "top_k_gating")`)
    run time  in the kernel, after the setup cells and before the first answer: every module
              attribute and notebook global holding a forbidden function is swapped for a tripwire
              that raises "uses X, which is what this task asks you to write"

(The ranks of a Cluster are separate processes with clean imports: there only the static guard holds.)
"""
from __future__ import annotations

import ast

from .generate import python_source

MESSAGE = "uses {name}, which is what this task asks you to write"


def forbidden_names(nb) -> list[str]:
    names = nb.metadata.get("moe_lab", {}).get("forbidden", [])
    return [n for n in names if isinstance(n, str) and "." in n]


def _aliases(trees) -> dict[str, str]:
    """Local name -> dotted module path, from every import in `trees`."""
    alias = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        alias[a.asname] = a.name
                    else:
                        alias[a.name.split(".")[0]] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
    return alias


def _dotted(node, alias) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in alias:
        return ".".join([alias[node.id], *reversed(parts)])
    return None


def _parse(source: str):
    try:
        return ast.parse(python_source(source))
    except SyntaxError:
        return None


def static_uses(answer: str, context: list[str], forbidden: list[str]) -> list[str]:
    """The forbidden names an answer cell uses, judged from its syntax (setup cells give the imports)."""
    if not forbidden:
        return []
    tree = _parse(answer)
    if tree is None:
        return []
    alias = _aliases([t for t in map(_parse, context) if t is not None] + [tree])
    leaves = {name.rsplit(".", 1)[1]: name for name in forbidden}
    hits = []

    def hit(name):
        if name not in hits:
            hits.append(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in forbidden or (full.startswith("moe_lab") and a.name in leaves):
                    hit(leaves.get(a.name, full))
        elif isinstance(node, (ast.Attribute, ast.Name)):
            full = _dotted(node, alias)
            if full is None:
                continue
            leaf = full.rsplit(".", 1)[-1]
            if full in forbidden or (full.startswith("moe_lab") and leaf in leaves):
                hit(leaves.get(leaf, full))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in leaves:
            hit(leaves[node.value])
    return hits


def tripwire_code(forbidden: list[str]) -> str:
    """Kernel code that swaps every reference to a forbidden function for one that raises."""
    return f'''
def __moe_lab_tripwires(names):
    import importlib, sys
    import __main__
    for dotted in names:
        module, _, attr = dotted.rpartition(".")
        try:
            real = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        message = {MESSAGE!r}.format(name=dotted)
        def tripwire(*args, __message=message, **kwargs):
            raise RuntimeError(__message)
        for holder in [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "moe_lab"] + [__main__]:
            for key, value in list(vars(holder).items()):
                if value is real:
                    setattr(holder, key, tripwire)
__moe_lab_tripwires({forbidden!r})
del __moe_lab_tripwires
'''
