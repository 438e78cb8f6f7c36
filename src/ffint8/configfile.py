"""Run options from a YAML or TOML file, and the resolved configuration written back to a run.

A config file maps option names as the CLI spells them, with underscores or hyphens (`look_ahead`,
`look-ahead`); FF options may also sit in a section `[ff]` / `ff:`, whose keys are flattened.
`load_config_file` returns a flat dict with underscore keys, checked against `valid` (name -> type:
int, float, str, bool, `int | None` (null allowed; YAML only, TOML has no null) or `list[int]`).
An int is accepted for a float (returned as a float); a bool never for a number. YAML reads 1e-3
as a float (YAML 1.2), not as the string PyYAML would. YAML needs PyYAML; TOML uses tomllib
(Python 3.11+) or tomli (3.10).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ffint8.errors import ConfigError
from ffint8.fileio import write_text_atomic
from ffint8.train.config import FFConfig, TrainConfig

YAML_SUFFIXES = (".yaml", ".yml")
TOML_SUFFIXES = (".toml",)
SECTION = "ff"
# YAML 1.2 floats that PyYAML (YAML 1.1: a dot and a signed exponent) leaves as strings: 1e-3, 1.0e3
_YAML_FLOAT = re.compile(r"^[-+]?([0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*(?=[eE]))([eE][-+]?[0-9]+)?$")


def default_valid_keys() -> dict[str, Any]:
    """Option name -> type for every TrainConfig and FFConfig field (TrainConfig.ff left out)."""
    valid = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(FFConfig)}
    del valid["ff"]
    valid["hidden"] = list[int]
    return valid


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> Any:
    """A PyYAML SafeLoader that also reads 1e-3 as a float; None if PyYAML is missing."""
    try:
        import yaml
    except ImportError:
        return None

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+.0123456789"))
    return Loader


def _toml_module() -> Any:
    """tomllib (3.11+) or tomli (3.10); None if neither imports."""
    try:
        return importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    except ImportError:
        return None


def _parse(path: Path, text: str) -> Any:
    """The file's data structure; ConfigError for a missing parser or a syntax error."""
    where = f"config file {path}"
    if path.suffix.lower() in YAML_SUFFIXES:
        loader = _yaml_loader()
        if loader is None:
            raise ConfigError(f"{where}: reading YAML needs PyYAML (pip install pyyaml)")
        import yaml

        try:
            return yaml.load(text, Loader=loader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e)
            raise ConfigError(f"{where}: invalid YAML{line}: {problem}") from None
    toml = _toml_module()
    if toml is None:
        raise ConfigError(f"{where}: reading TOML on Python 3.10 needs tomli (pip install tomli)")
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"{where}: invalid TOML: {e}") from None


def _read(path: Path) -> Any:
    """Parse a .yaml/.yml/.toml file; ConfigError if it is missing, unreadable or malformed."""
    if path.suffix.lower() not in YAML_SUFFIXES + TOML_SUFFIXES:
        raise ConfigError(f"config file {path}: unknown extension {path.suffix!r}; "
                          "use .yaml, .yml or .toml")
    if not path.exists():
        raise ConfigError(f"config file {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read it: {e}") from None
    return _parse(path, text)


def _flatten(data: Mapping, valid: Mapping[str, Any], where: str) -> dict[str, tuple[str, Any]]:
    """Underscore key -> (key as written, value), with the [ff] section's keys lifted up."""
    flat: dict[str, tuple[str, Any]] = {}

    def put(name: Any, written: str, value: Any) -> None:
        if not isinstance(name, str):
            raise ConfigError(f"{where}: option names must be text, got {name!r}")
        name = name.replace("-", "_")
        if name in flat:
            raise ConfigError(f"{where}: {name!r} is given twice ({flat[name][0]!r} and {written!r})")
        flat[name] = (written, value)

    for key, value in data.items():
        if key == SECTION and SECTION not in valid:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {SECTION!r} must be a section of FF options, "
                                  f"got {_show(value)}")
            for sub, sub_value in value.items():
                put(sub, f"{SECTION}.{sub}", sub_value)
        else:
            put(key, str(key), value)
    return flat


def _show(value: Any) -> str:
    """A value as the user wrote it, for messages."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return "a mapping" if isinstance(value, Mapping) else repr(value)


def type_name(tp: Any) -> str:
    """How a type is described in messages ("an integer or null", "a list of integers")."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        item = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return "a list of " + type_name(item).split(" ", 1)[-1] + "s"
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)",
             type(None): "null", Any: "a value"}
    return names.get(tp, f"a {getattr(tp, '__name__', tp)}")


def check_value(value: Any, tp: Any) -> Any:
    """`value` as type `tp` (an int becomes a float where a float is wanted); TypeError if not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check_value(value, arg)
            except TypeError:
                pass
        raise TypeError(tp)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise TypeError(tp)
        item = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return [check_value(v, item) for v in value]
    if tp is Any or (tp is type(None) and value is None):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and tp is not bool:
        raise TypeError(tp)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(tp)


def load_config_file(path: str | os.PathLike, valid: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options from a YAML/TOML file as {underscore name: value}, checked against `valid`.

    `valid` maps option names (underscores) to types; default `default_valid_keys()`. An empty
    YAML file gives {}. Raises ConfigError naming the file for every fault.
    """
    valid = default_valid_keys() if valid is None else valid
    path = Path(path)
    where = f"config file {path}"
    data = _read(path)
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping of option: value, "
                          f"got {type(data).__name__}")
    flat = _flatten(data, valid, where)
    unknown = {name: written for name, (written, _) in flat.items() if name not in valid}
    if unknown:
        hints = [f"{w!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            n, list(valid), n=1)) else repr(w) for n, w in unknown.items()]
        raise ConfigError(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(hints)}; valid options: {', '.join(valid)}")
    out: dict[str, Any] = {}
    for name, (written, value) in flat.items():
        try:
            out[name] = check_value(value, valid[name])
        except TypeError:
            raise ConfigError(f"{where}: {written!r} must be {type_name(valid[name])}, "
                              f"got {_show(value)}") from None
    return out


def _plain(obj: Any) -> Any:
    """obj with tuples as lists, paths as strings and mapping keys as strings, for dumping."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return os.fspath(obj) if isinstance(obj, os.PathLike) else obj


def dump_resolved(cfg_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved config to `path` atomically (temporary file + os.replace).

    The format is YAML (PyYAML's safe_dump, keys in the given order, lists of scalars inline)
    when PyYAML is installed, else indented JSON (also valid YAML, so a `config.yaml` written
    without PyYAML reads back once it is installed). Tuples become lists; nested
    mappings such as TrainConfig.to_dict()'s "ff" become a section that load_config_file flattens.
    """
    data = _plain(cfg_dict)
    if _yaml_loader() is None:
        text = json.dumps(data, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)
    write_text_atomic(path, text)
