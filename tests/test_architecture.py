"""The shape of the house, guarded: no import cycles among kiosk's modules (imports made only for type checking
and imports inside functions count too), no adapter that reaches for the service, each vendor or hardware library
imported in exactly one module, and no module past 400 lines without saying why in its docstring.

    .venv/bin/python tests/test_architecture.py     # prints the import graph's size, the cycles and the largest rooms
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kiosk"

#: The adapters: each is handed the app interface (kiosk.app), never the service.
ADAPTERS = (
    "kiosk.web",
    "kiosk.captions.web",
    "kiosk.captions.live",
    "kiosk.captions.transcript",
    "kiosk.staff",
    "kiosk.fleet",
    "kiosk.buttons",
    "kiosk.schedule",
)

#: Vendor and hardware libraries, each behind one module of ours.
VENDORS = {
    "alsaaudio": "kiosk.alsa_output",
    "gpiozero": "kiosk.buttons",
    "openai": "kiosk.speech.openai_engine",
    "piper": "kiosk.speech.piper_voice",
    "onnx": "kiosk.speech.piper_voice",
    "onnxruntime": "kiosk.speech.piper_voice",
    "aiomqtt": "kiosk.fleet.mqtt",
    "pythonosc": "kiosk.fleet.osc",
    "pyebur128": "kiosk.loudness",
    "prometheus_client": "kiosk.metrics",
    "aiohttp_sse": "kiosk.captions.live",
    "jinja2": "kiosk.web.templates",
    "segno": "kiosk.staff.label",
    "packaging": "kiosk.update.archive",
}

MAX_LINES = 400
#: A module may pass MAX_LINES when its docstring says why, with this phrase.
LONG_BECAUSE = "Longer than most because"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str) -> set[str]:
    """Every module `path` imports, wherever the import statement is (top level, TYPE_CHECKING, a function)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from kiosk.fleet import mqtt`
            found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the kiosk modules it imports. A module's own parent packages are left out: Python imports them
    before any module inside them, so `from kiosk.fleet import discovery` in kiosk.fleet.mqtt is no cycle."""
    known = modules()
    return {
        name: {m for m in imported(path, name) if m in known and m != name and not name.startswith(m + ".")}
        for name, path in known.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a cycle or a knot of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _is_adapter(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ADAPTERS)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_kiosk_modules():
    assert cycles(import_graph()) == []


def test_no_adapter_imports_the_service():
    graph = import_graph()
    offenders = sorted(name for name, deps in graph.items() if _is_adapter(name) and "kiosk.service" in deps)
    assert offenders == []


def test_each_vendor_library_is_imported_in_exactly_one_module():
    known = modules()
    for vendor, owner in VENDORS.items():
        users = sorted(
            name
            for name, path in known.items()
            if any(m == vendor or m.startswith(vendor + ".") for m in imported(path, name))
        )
        assert users == [owner], f"{vendor} is imported by {users}"


def adapter_views() -> dict[str, type]:
    """Each adapter's own narrow view of the app: the Protocol its fakes implement."""
    from kiosk.fleet.control import Backend as CommandsView
    from kiosk.staff.backend import StaffBackend
    from kiosk.web.api import Backend as ApiView

    return {"HTTP API": ApiView, "staff pages": StaffBackend, "MQTT and OSC commands": CommandsView}


def test_the_app_is_every_adapter_view():
    """Whatever an adapter may ask for, the app interface offers, with the same parameters."""
    from kiosk.app import App

    for adapter, view in adapter_views().items():
        wanted = [n for n in dir(view) if not n.startswith("_")] + list(getattr(view, "__annotations__", {}))
        for name in wanted:
            offered = hasattr(App, name) or name in App.__annotations__  # a method, a property or an attribute
            assert offered, f"the {adapter} ask for {name}, which kiosk.app.App does not offer"
            theirs, ours = getattr(view, name, None), getattr(App, name, None)
            if inspect.isfunction(theirs):
                asked, offered = inspect.signature(theirs).parameters, inspect.signature(ours).parameters
                assert set(asked) <= set(offered), f"{adapter}: {name}{list(asked)} is not App.{name}{list(offered)}"


def test_no_module_passes_400_lines_without_saying_why():
    too_long = []
    for name, path in modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if lines > MAX_LINES and LONG_BECAUSE not in docstring:
            too_long.append(f"{name}: {lines} lines")
    assert too_long == []


if __name__ == "__main__":
    graph = import_graph()
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(len(d) for d in graph.values())} imports between them")
    print(f"import cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in modules().items()), reverse=True)
    print("largest modules:")
    for lines, name in sizes[:8]:
        print(f"  {lines:5}  {name}")
