"""A researcher's own methods, from their own file or package, registered beside the built-in ones.

``--methods-from my_method.py`` (``train``, ``run``, ``confirm``) and the ``drl_tune.methods`` entry-point group
(``[project.entry-points."drl_tune.methods"] mine = "my_package.my_method"`` in the user's own package) register every
:class:`~drl_tune.methods.base.Method` subclass the file or module defines. From then on the method is one of the
registry's: ``--set mine.key=…``, search spaces, the plan, the docs table and the bad-input checks treat it as they
treat a built-in method, because they all read :data:`drl_tune.methods.REGISTRY` and the method's ``Params``.

A study records each file's text (:class:`MethodsSource`), not only its path: its trials register the recorded
text wherever they run (a Ray worker on another node has no copy of the file), and ``--resume`` trains the method
the study started with even if the file changed since.

What a method file must hold, each refused in one line naming the file: valid Python; at least one ``Method``
subclass with a ``name`` (an identifier, not a built-in method's) and a ``Params`` dataclass whose every field is
declared with :func:`drl_tune.ground.domains.param` (its meaning, and bounds for a number).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drl_tune.ground.domains import DOC, DOMAIN
from drl_tune.ground.errors import ConfigError
from drl_tune.methods.base import Method, NoParams

ENTRY_POINT_GROUP = "drl_tune.methods"
GUIDE = "docs/add-your-method.md"


@dataclass(frozen=True)
class MethodsSource:
    """A file of methods as a study records it: where it came from and its text."""

    origin: str  # the absolute path it was read from
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {"origin": self.origin, "source": self.source, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MethodsSource:
        return cls(str(raw["origin"]), str(raw["source"]))


# built-in names, frozen at import (before any user method is registered): a user method may not take one
_BUILT_IN: frozenset[str] = frozenset()
# name -> sha256 of the source that registered it (the same text twice is a no-op; another text is refused)
_REGISTERED: dict[str, str] = {}


def read_methods_file(path: str | Path) -> MethodsSource:
    """The text of a methods file, or one line saying why it cannot be read."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--methods-from {path}: no such file; give the path of a .py file that defines your "
                          f"Method subclass ({GUIDE})")
    if file.suffix != ".py":
        raise ConfigError(f"--methods-from {path}: not a .py file")
    try:
        return MethodsSource(str(file.resolve()), file.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--methods-from {path}: cannot read it ({err})") from None


def register_source(methods: MethodsSource) -> list[str]:
    """Run the file's text as a module of its own and register every Method subclass it defines; their names."""

    origin = methods.origin
    try:
        code = compile(methods.source, origin, "exec")
    except SyntaxError as err:
        raise ConfigError(f"{origin} line {err.lineno}: syntax error: {err.msg}; fix the file") from None
    module_name = f"drl_tune_user_methods_{methods.sha256[:12]}"
    module = sys.modules.get(module_name)
    if module is None:
        module = types.ModuleType(module_name)
        module.__file__ = origin
        sys.modules[module_name] = module  # dataclasses and pickling look classes up by their module
        try:
            exec(code, module.__dict__)
        except Exception as err:
            del sys.modules[module_name]
            line = _error_line(err, origin)
            raise ConfigError(f"{origin}{line}: running it failed: {type(err).__name__}: {err}") from None
    found = [value for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, Method) and value.__module__ == module_name]
    if not found:
        raise ConfigError(f"{origin} defines no Method subclass (class MyMethod(Method): name = \"mine\"; Params = "
                          f"...); see {GUIDE}")
    return register_classes(found, origin, methods.sha256)


def register_classes(classes: list[type[Method]], origin: str, key: str) -> list[str]:
    """Check and register ``classes`` (from ``origin``; ``key`` tells one definition of a name from another: the
    same key twice is a no-op, another definition under a registered name is refused); their names."""
    from drl_tune.methods import REGISTRY

    for cls in classes:
        check_method(cls, origin)
    names = []
    for cls in classes:
        if _REGISTERED.get(cls.name) == key:
            names.append(cls.name)
            continue
        if cls.name in REGISTRY:
            raise ConfigError(f"{origin}: method name {cls.name!r} is already registered (from "
                              f"{getattr(REGISTRY[cls.name], '__module__', '?')}); give your method another name")
        REGISTRY[cls.name] = cls
        _REGISTERED[cls.name] = key
        names.append(cls.name)
    return names


def check_method(cls: type[Method], origin: str) -> None:
    """Refuse a user method the registry could not treat as a built-in one, naming what to change."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name.isidentifier() or not name.islower():
        raise ConfigError(f"{origin}: {cls.__name__}.name must be a lower-case identifier (the config block's name, "
                          f"e.g. name = \"mine\"), got {name!r}")
    if name in _built_in():
        raise ConfigError(f"{origin}: method name {name!r} is a built-in method's; give your method another name")
    params = getattr(cls, "Params", NoParams)
    if not dataclasses.is_dataclass(params):
        raise ConfigError(f"{origin}: {cls.__name__}.Params must be a @dataclass of the method's keys")
    for f in dataclasses.fields(params):
        if not f.metadata.get(DOC):
            raise ConfigError(f"{origin}: {name}.{f.name} is declared without param(default, \"what it means\", ...) "
                              f"(drl_tune.ground.domains.param): every key needs its meaning, and a number its range")
        default = f.default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and f.metadata.get(DOMAIN) is None:
            raise ConfigError(f"{origin}: {name}.{f.name} is a number without a range: give param(...) its bounds "
                              f"(ge=, gt=, le=, lt=)")


def load_entry_points() -> list[str]:
    """Register the methods of every installed package's ``drl_tune.methods`` entry point (a module: its Method
    subclasses; or one Method subclass); their names. The package is installed wherever the study runs, so these are
    imported, not recorded."""
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry.name} ({entry.value})"
        try:
            target = entry.load()
        except Exception as err:
            raise ConfigError(f"{where}: cannot be loaded: {type(err).__name__}: {err}") from None
        if isinstance(target, type) and issubclass(target, Method):
            classes = [target]
        elif isinstance(target, types.ModuleType):
            classes = [v for v in vars(target).values() if isinstance(v, type) and issubclass(v, Method)
                       and v.__module__ == target.__name__]
        else:
            raise ConfigError(f"{where}: names neither a module nor a Method subclass")
        if not classes:
            raise ConfigError(f"{where}: defines no Method subclass; see {GUIDE}")
        names += register_classes(classes, where, f"entry:{entry.value}")
    return names


def _built_in() -> frozenset[str]:
    global _BUILT_IN
    if not _BUILT_IN:
        from drl_tune.methods import REGISTRY

        _BUILT_IN = frozenset(n for n, cls in REGISTRY.items() if cls.__module__.startswith("drl_tune.methods."))
    return _BUILT_IN


def _error_line(err: BaseException, origin: str) -> str:
    tb = err.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == origin:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" line {line}" if line else ""


def use_methods(files: list[str] | None = None, recorded: list[dict[str, Any]] | None = None) -> list[MethodsSource]:
    """Register the installed packages' entry-point methods, then the methods of ``files`` (``--methods-from``) or of
    a study's ``recorded`` sources; the sources to record (entry points are not recorded)."""
    load_entry_points()
    sources = [MethodsSource.from_dict(r) for r in recorded or []] + [read_methods_file(f) for f in files or []]
    for source in sources:
        register_source(source)
    return sources


def check_resumed_files(files: list[str], recorded: list[dict[str, Any]], what: str) -> None:
    """``--methods-from`` given to a ``--resume``: each file must be one the study (or benchmark, ``what``) recorded,
    with the same text — what is resumed trains the methods it started with."""
    for given in files:
        if all(read_methods_file(given).sha256 != r["sha256"] for r in recorded):
            raise ConfigError(f"--resume: --methods-from {given} is not a file the {what} recorded (or it changed "
                              f"since); the {what} trains the methods it started with: leave --methods-from out")
