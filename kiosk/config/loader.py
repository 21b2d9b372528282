"""Loading a config: the file read as YAML with every bound (size, UTF-8, nesting depth, aliases expanded,
duplicate keys), the staff settings laid over it, and the result validated (kiosk.config.validation).

Only the operator's file may stop the speaker: staff settings that cannot be used are set aside
(kiosk.config.staff_settings) and the operator's file is used alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from kiosk.config.fields import _kind, _show
from kiosk.config.model import Config
from kiosk.config.staff_settings import overlay_staff_settings, set_aside_staff_settings, staff_settings_path
from kiosk.config.validation import validate
from kiosk.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/kiosk/kiosk.yaml")
# The service re-reads its config on SIGHUP: a 30 MB file once blocked it for 20 s, so size and shape are bounded.
MAX_CONFIG_BYTES = 1_000_000
MAX_YAML_DEPTH = 32  # the composer recurses: 10 000 '[' would end in RecursionError
MAX_YAML_NODES = 100_000  # counted with aliases expanded: "billion laughs" is a few lines of anchors


def load_config(path: Path | str, staff_settings: dict | None = None, *, uploaded: bool = False) -> Config:
    """Read and validate a config file with the staff page's settings laid over it; ConfigError lists every
    problem. `staff_settings` stands in for the settings file (to check a change before saving it). Settings this
    version does not know at all (saved by a later one before a rollback) are ignored, unless `uploaded` (a file
    staff upload, where an unknown name is a mistake to point out, and the problems name "the uploaded file").

    Only the operator's file may stop the speaker: a settings file that cannot be read, or does not fit the
    operator's file, is set aside (see `set_aside_staff_settings`) and the operator's file is used alone."""
    path = Path(path)
    data = _read_yaml_mapping(path)
    settings_path = staff_settings_path(data)
    if staff_settings is not None:
        return _with_staff_settings(data, staff_settings, settings_path, uploaded)
    saved = read_staff_settings(settings_path)
    try:
        return _with_staff_settings(data, saved, settings_path, False)
    except ConfigError as exc:
        operator_only = _valid_or_none(data) if saved else None
        if operator_only is None:  # the operator's own file has problems: they are reported with the rest
            raise
        set_aside_staff_settings(settings_path, f"{len(exc.problems)} problem(s), the first: {exc.problems[0]}")
        return operator_only


def _with_staff_settings(data: dict, staff_settings: dict, settings_path: Path, uploaded: bool) -> Config:
    problems: list[str] = []
    source = "the uploaded file" if uploaded else _show(settings_path, 1000)
    if staff_settings:
        data = overlay_staff_settings(data, staff_settings, source, problems, strict=uploaded)
    return validate(data, problems)


def _valid_or_none(data: dict) -> Config | None:
    try:
        return validate(data)
    except ConfigError:
        return None


def read_staff_settings(path: Path) -> dict:
    """The staff page's settings file as a mapping ({} when there is none yet). A file that cannot be read as
    settings (damaged, not YAML, too large or too deep, unreadable) is set aside and {} returned: the speaker goes
    on without it, and the next save starts a new file rather than writing over it."""
    try:
        return _read_yaml_mapping(path, missing_ok=True)
    except ConfigError as exc:
        set_aside_staff_settings(path, exc.problems[0])
        return {}


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate config text (no staff settings laid over it)."""
    return validate(_yaml_mapping(text, source))


def _read_yaml_mapping(path: Path, missing_ok: bool = False) -> dict:
    """A YAML file's top-level mapping. A file over MAX_CONFIG_BYTES is refused before the parser sees it (and
    read no further than the limit: it may be a pipe or still growing)."""
    source = _show(path, 1000)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_CONFIG_BYTES + 1) if size <= MAX_CONFIG_BYTES else b""
    except OSError as exc:
        if missing_ok and isinstance(exc, FileNotFoundError | NotADirectoryError):
            return {}
        raise ConfigError([f"{source}: cannot read config file ({exc.strerror or exc})"]) from exc
    except ValueError as exc:  # a NUL or a lone surrogate in the path
        raise ConfigError([f"{source}: cannot read config file ({exc})"]) from exc
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: config file is too large ({size} bytes; the limit is {MAX_CONFIG_BYTES})"])
    return yaml_mapping_of(data, source)


def yaml_mapping_of(data: bytes, source: str) -> dict:
    """The top-level mapping of YAML bytes (a file, or an upload on the staff page), with every bound applied."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: config file is too large (over {MAX_CONFIG_BYTES} bytes)"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{source}: not valid UTF-8 at byte {exc.start} (line {line})"]) from exc
    return _yaml_mapping(text, source)


_TOO_DEEP = f"nested deeper than {MAX_YAML_DEPTH} levels"
_TOO_MANY = f"too many aliases or nodes (over {MAX_YAML_NODES} with aliases expanded)"


class _SafeLoaderWithoutDuplicates(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice is an error (PyYAML would silently keep the last one), that
    composing stops at MAX_YAML_DEPTH levels or MAX_YAML_NODES nodes, and that a value Python cannot make (a
    5,000-digit number, 30 February) is a YAML error at its line rather than a bare ValueError."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH or self._nodes > MAX_YAML_NODES:
                problem = _TOO_DEEP if self._depth > MAX_YAML_DEPTH else _TOO_MANY
                raise yaml.composer.ComposerError(None, None, problem, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            raise yaml.constructor.ConstructorError(None, None, _unmakeable(node, exc), node.start_mark) from exc


def _unmakeable(node: yaml.Node, exc: Exception) -> str:
    # Python's limit on reading whole numbers from text; its hint (sys.set_int_max_str_digits) is not for staff.
    if "Exceeds the limit" in str(exc):
        return f"a number with more than {sys.get_int_max_str_digits()} digits"
    kind = node.tag.rsplit(":", 1)[-1]
    return f"{_show(node.value) if isinstance(node, yaml.ScalarNode) else 'this'} is not a valid {kind} ({exc})"


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # `? [a]` or `? {a: 1}`: no mapping can hold a list or mapping as a key
            raise yaml.constructor.ConstructorError(
                None, None, f"{_kind(key)} cannot be a key", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_show(repr(key))}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_SafeLoaderWithoutDuplicates.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _yaml_mapping(text: str, source: str) -> dict:
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML{_yaml_where(exc, text)}: {_yaml_problem(exc)}"]) from exc
    except RecursionError as exc:  # the bounds above should make this unreachable; still one line if not
        raise ConfigError([f"{source}: not valid YAML: {_TOO_DEEP}"]) from exc
    except Exception as exc:  # a PyYAML corner not met yet: one line, never a traceback
        raise ConfigError([f"{source}: cannot read YAML: {_show(exc, 200)}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections, not {_kind(data)}"])
    return data


def _load_yaml(text: str) -> Any:
    """yaml.load with a SafeLoader (no arbitrary objects), the composed nodes checked before any is constructed."""
    loader = _SafeLoaderWithoutDuplicates(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_node_graph(root: yaml.Node) -> None:
    """Refuse a document that aliases make too deep or too big ("billion laughs": each anchor repeating the one
    before), or that contains itself, before it is constructed. Walks each distinct node once, without recursion."""
    size: dict[int, int] = {}  # id(node) → nodes with aliases expanded, capped just over the limit
    depth: dict[int, int] = {}
    walking: set[int] = set()  # the nodes on the path from the root to the current one
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _child_nodes(node)
        if children_done:
            walking.discard(id(node))
            size[id(node)] = min(MAX_YAML_NODES + 1, 1 + sum(size[id(c)] for c in children))
            depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[id(node)] > MAX_YAML_NODES or depth[id(node)] > MAX_YAML_DEPTH:
                problem = _TOO_MANY if size[id(node)] > MAX_YAML_NODES else _TOO_DEEP
                raise yaml.composer.ComposerError(None, None, problem, node.start_mark)
        elif id(node) in walking:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it", node.start_mark)
        elif id(node) not in size:
            walking.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)


def _child_nodes(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _yaml_where(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (a NUL, a lone surrogate)
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        return f" at line {line}, column {column}"
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character #x{exc.character:04x} is not allowed" if isinstance(exc.character, int) else exc.reason
    return _show(getattr(exc, "problem", None) or getattr(exc, "context", None) or exc, 200)
