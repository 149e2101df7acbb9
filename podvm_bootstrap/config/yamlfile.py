"""Strict reading of the baked YAML files: a mapping with known keys only.

The helpers here turn every shape or type problem into a ConfigError naming the
file and the dotted key, so that an image builder sees exactly what to fix."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from podvm_bootstrap.common.errors import ConfigError, one_line
from podvm_bootstrap.config.quantities import parse_duration, parse_size

T = TypeVar("T")


class YamlProblem(ValueError):
    """A YAML text that cannot be loaded: the message is one line, with the
    line number when the parser knows it, and never the document's content."""


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no arbitrary objects), stricter on explicit tags:
    `!!int ''`, `!!bool x`, `!!timestamp 1` and the like make the library's
    constructors fail with IndexError, KeyError or AttributeError; here a
    scalar with an explicit !!int/!!float/!!bool/!!timestamp tag must look
    like one (the resolver's own pattern for that tag), else it is a YAML error."""

    allow_aliases = True

    def compose_node(self, parent: Any, index: Any) -> Any:
        if not self.allow_aliases and self.check_event(yaml.AliasEvent):
            # A few hundred bytes of nested aliases ("billion laughs") would
            # otherwise expand into gigabytes of objects.
            event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in PyYAML's stubs
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed", event.start_mark)
        return super().compose_node(parent, index)


class _NoAliasLoader(_SafeLoader):
    allow_aliases = False


def _implicit_patterns() -> dict[str, Any]:
    patterns: dict[str, Any] = {}
    for resolvers in yaml.SafeLoader.yaml_implicit_resolvers.values():
        for tag, pattern in resolvers:
            patterns.setdefault(tag, pattern)
    return patterns


def _checked_scalar(tag: str, pattern: Any) -> Callable[[Any, Any], Any]:
    construct = yaml.SafeLoader.yaml_constructors[tag]
    kind = tag.rsplit(":", 1)[-1]

    def constructor(loader: Any, node: Any) -> Any:
        value = loader.construct_scalar(node)  # a ConstructorError unless a scalar
        if not pattern.match(value):
            raise yaml.constructor.ConstructorError(None, None, f"not a valid !!{kind} value", node.start_mark)
        return construct(loader, node)

    return constructor


class _FastSafeLoader(getattr(yaml, "CSafeLoader", _SafeLoader)):  # type: ignore[misc]
    """The same safe constructors over libyaml's parser (about ten times
    faster on the baked files, which the boot reads first). Used for trusted
    text only: the alias check above lives in the pure-Python composer."""


for _tag, _pattern in _implicit_patterns().items():
    if _tag.rsplit(":", 1)[-1] in ("int", "float", "bool", "timestamp"):
        _SafeLoader.add_constructor(_tag, _checked_scalar(_tag, _pattern))
        _FastSafeLoader.add_constructor(_tag, _checked_scalar(_tag, _pattern))


def load_yaml_text(text: str, *, aliases: bool = True) -> Any:
    """The document in `text`, built with the safe constructors only;
    YamlProblem (one line) for anything that cannot be loaded. `aliases=False`
    for untrusted text."""
    if aliases:
        try:
            return yaml.load(text, Loader=_FastSafeLoader)  # noqa: S506 - safe constructors
        except Exception:  # noqa: BLE001 - a text libyaml refuses: the reference loader below words why
            pass
    try:
        return yaml.load(text, Loader=_SafeLoader if aliases else _NoAliasLoader)  # noqa: S506 - safe loaders
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise YamlProblem(one_line(f"{problem}{where}", 200)) from None
    except RecursionError:
        raise YamlProblem("nested too deeply") from None
    except (ValueError, OverflowError, TypeError, LookupError, AttributeError) as exc:
        # What the safe constructors still raise for a scalar they cannot
        # build (a date like 2001-13-14, an integer of thousands of digits):
        # the library's fault or the text's, never a traceback.
        raise YamlProblem(f"invalid value: {one_line(exc, 200)}") from None


def load_yaml_mapping(path: Path, *, missing_ok: bool) -> dict[str, Any]:
    """The top-level mapping of a YAML file; {} when it is absent and missing_ok."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read: {exc}") from None
    try:
        data = load_yaml_text(text)
    except YamlProblem as exc:
        raise ConfigError(path, "", str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


class Section:
    """A mapping inside a YAML file, with its file and dotted key for errors."""

    def __init__(self, path: Path, key: str, data: object) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, key, f"expected a mapping, got {type(data).__name__}")
        self.path = path
        self.key = key
        self.data: dict[str, Any] = data

    def child_key(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.child_key(name), message)

    def only(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for name in self.data:
            if not isinstance(name, str):
                raise ConfigError(self.path, self.key or "", f"keys must be strings, got {name!r}")
            if name not in allowed:
                raise self.error(name, f"unknown key (known: {', '.join(sorted(allowed))})")

    def version(self, expected: int) -> int:
        """The file's required `version`, which must be `expected`."""
        version = self.data.get("version")
        if version is None:
            raise self.error("version", f"required (set it to {expected})")
        if isinstance(version, bool) or version != expected:
            raise self.error("version", f"unsupported version {version!r} (expected {expected})")
        return expected

    def section(self, name: str) -> Section:
        return Section(self.path, self.child_key(name), self.data.get(name))

    def convert(self, name: str, default: T, fn: Callable[[Any], T]) -> T:
        if name not in self.data or self.data[name] is None:
            return default
        try:
            return fn(self.data[name])
        except (ValueError, TypeError) as exc:
            raise self.error(name, str(exc)) from None

    def string(self, name: str, default: T, *, choices: Iterable[str] | None = None) -> str | T:
        if name not in self.data or self.data[name] is None:
            return default
        value = self.data[name]
        if not isinstance(value, str) or not value:
            raise self.error(name, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {value!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.data.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(name, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        return self.convert(name, default, parse_duration)

    def size(self, name: str, default: int) -> int:
        return self.convert(name, default, parse_size)

    def string_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        if name not in self.data or self.data[name] is None:
            return default
        value = self.data[name]
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of strings, got {type(value).__name__}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(self.path, f"{self.child_key(name)}[{index}]",
                                  f"expected a string, got {item!r}")
        return tuple(value)
