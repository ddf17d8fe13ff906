"""Type checks of config fields and function arguments against their annotations.

A config built with ``max_steps="3"`` or ``lr="1e-4"`` used to fail with a bare ``TypeError``
(``'<' not supported between 'str' and 'int'``) from deep inside the Trainer, after the model had
loaded. These helpers check the value against the annotation first and raise the house-style
error (:func:`cltx.errors.bad_arg`): the argument, the value received and the type to pass.

Supported annotations: ``int``, ``float`` (an int is a float), ``bool``, ``str``, ``Path``
(a ``str`` or ``os.PathLike``), ``None``, unions (``X | None``, ``Optional``), ``list``/``tuple``/
``Sequence`` of a supported item type (a bare ``str`` is refused there: ``tuple("ab")`` splits
it into characters), ``dict``, ``Literal`` choices, ``Enum`` classes (a member or its value) and
plain classes (``isinstance``). Anything else (``Any``, protocols, callables) is not checked.
numpy scalars pass for ``int``/``float``/``bool`` and are turned into the Python number, so that
they reach reports (``json.dumps``) and torch as plain numbers.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import inspect
import numbers
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePath
from typing import Any

from cltx.errors import bad_arg, check_options

# The ``TrainingArguments`` fields that cltx's entry points set and that reach arithmetic before
# transformers looks at them. Only these inherited fields are type-checked: transformers validates
# its own options, and some of its annotations are narrower than what it accepts (``fsdp=True``).
TRAINING_NUMBERS = (
    "per_device_train_batch_size",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "warmup_steps",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "seed",
    "data_seed",
    "bf16",
    "fp16",
    "use_cpu",
)

_UNKNOWN = object()  # an annotation these checks do not understand: the value is not checked
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)


class _Mismatch(Exception):
    """The value does not fit the annotation."""


def _is_numpy_bool(value: object) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")


def _normalize(value: object, tp: Any) -> object:
    """The value as ``tp`` accepts it, ``_UNKNOWN`` when ``tp`` is not understood, or raise ``_Mismatch``."""
    if tp is Any or tp is object or isinstance(tp, (str, typing.TypeVar)):
        return _UNKNOWN
    if tp is None or tp is type(None):
        if value is None:
            return value
        raise _Mismatch
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        unknown = False
        for arg in typing.get_args(tp):
            try:
                got = _normalize(value, arg)
            except _Mismatch:
                continue
            if got is _UNKNOWN:
                unknown = True
                continue
            return got
        if unknown:
            return _UNKNOWN
        raise _Mismatch
    if origin is typing.Literal:
        if any(value == c and type(value) is type(c) for c in typing.get_args(tp)):
            return value
        raise _Mismatch
    if origin is typing.Annotated:
        return _normalize(value, typing.get_args(tp)[0])
    if origin in _SEQUENCES:
        # A tuple for a list field (and the reverse) works wherever cltx reads it; a bare string
        # does not: tuple("ab") splits it into characters.
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if not args:
            return value
        items = args[:1] if (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else args
        if len(items) != 1 and len(items) != len(value):
            raise _Mismatch
        out = [_normalize(v, items[0] if len(items) == 1 else items[i]) for i, v in enumerate(value)]
        if all(o is v or o is _UNKNOWN for o, v in zip(out, value, strict=True)):
            return value
        return type(value)(v if o is _UNKNOWN else o for o, v in zip(out, value, strict=True))
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if origin is not None:
        return _UNKNOWN
    if not isinstance(tp, type):
        return _UNKNOWN
    if tp is bool:
        if isinstance(value, bool):
            return value
        if _is_numpy_bool(value):
            return bool(value)
        raise _Mismatch
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and not _is_numpy_bool(value):
            return value if type(value) is int else int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not _is_numpy_bool(value):
            if type(value) in (int, float):
                return value
            return int(value) if isinstance(value, numbers.Integral) else float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if issubclass(tp, PurePath):
        if isinstance(value, (str, os.PathLike)):
            return value
        raise _Mismatch
    if issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            tp(value)
        except (ValueError, TypeError):
            raise _Mismatch from None
        return value
    if getattr(tp, "_is_protocol", False) or tp in (collections.abc.Callable,):
        return _UNKNOWN
    if isinstance(value, tp):
        return value
    raise _Mismatch


def describe(tp: Any) -> str:
    """What to pass for annotation ``tp``, in words (``an integer``, ``a number or None`` …)."""
    origin = typing.get_origin(tp)
    if tp is None or tp is type(None):
        return "None"
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        parts = list(dict.fromkeys(describe(a) for a in typing.get_args(tp)))
        if "None" in parts:  # "an integer or None" reads better than "None or an integer"
            parts = [p for p in parts if p != "None"] + ["None"]
        return " or ".join(parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin is typing.Annotated:
        return describe(typing.get_args(tp)[0])
    if origin in _SEQUENCES:
        args = typing.get_args(tp)
        item = describe(args[0]) if args else "items"
        plural = {"a string": "strings", "an integer": "integers", "a number": "numbers"}.get(item)
        if plural is None:
            name = getattr(args[0], "__name__", None) if args else None
            plural = f"{name} objects" if isinstance(args[0], type) and name else f"items ({item})"
        return f"a list or tuple of {plural}"
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return "a dict"
    if tp is bool:
        return "True or False"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "a path (str or pathlib.Path)"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    name = str(getattr(tp, "__name__", tp))
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def check_value(name: str, value: object, tp: Any, *, hint: str | None = None) -> object:
    """Return ``value`` (numpy numbers as Python numbers) when it fits annotation ``tp``.

    Raises:
        CltxError: ``name=value: pass <what tp asks for> (got <type>)[; hint]``.
    """
    try:
        got = _normalize(value, tp)
    except _Mismatch:
        extra = f"; {hint}" if hint else ""
        got = type(value).__name__
        if isinstance(value, (list, tuple)) and value:
            got += " of " + ", ".join(sorted({type(v).__name__ for v in value}))
        raise bad_arg(name, value, f"pass {describe(tp)} (got {got}){extra}") from None
    return value if got is _UNKNOWN else got


@functools.cache
def _hints(obj: Any) -> Mapping[str, Any]:
    """Resolved annotations of a class or function; a name that cannot be resolved is left out."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # an annotation naming something only imported for type checkers
        pass
    out: dict[str, Any] = {}
    owners = [c for c in reversed(obj.__mro__) if "__annotations__" in vars(c)] if isinstance(obj, type) else [obj]
    for owner in owners:
        module = __import__(owner.__module__, fromlist=["_"]) if isinstance(owner, type) else None
        namespace = vars(module) if module is not None else getattr(owner, "__globals__", {})
        for key, ann in getattr(owner, "__annotations__", {}).items():
            try:
                out[key] = eval(ann, namespace) if isinstance(ann, str) else ann  # noqa: S307 - own source
            except Exception:
                out.pop(key, None)
    return out


def check_fields(
    obj: Any,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    names: Mapping[str, str] | None = None,
    fix_hints: Mapping[str, str] | None = None,
) -> None:
    """Check a dataclass instance's fields against their annotated types (call it first in
    ``__post_init__``); numpy numbers are replaced by Python numbers.

    Args:
        only: the fields to check (default: every ``init`` field), e.g. a config's own fields and
            the few inherited ones that reach arithmetic before any library check.
        skip: fields checked elsewhere (a field that also accepts a comma-separated string).
        names: the name to report per field (``learning_rate`` → ``lr``), where the class's other
            errors use it.
        fix_hints: more of the fix per field (``e.g. parse_styles('bracket,paren')``).
    """
    hints = _hints(type(obj))
    wanted = None if only is None else set(only)
    skipped = set(skip)
    for f in dataclasses.fields(obj):
        if not f.init or f.name in skipped or (wanted is not None and f.name not in wanted) or f.name not in hints:
            continue
        value = getattr(obj, f.name)
        got = check_value((names or {}).get(f.name, f.name), value, hints[f.name], hint=(fix_hints or {}).get(f.name))
        if got is not value:
            object.__setattr__(obj, f.name, got)  # also for frozen dataclasses


def check_args(fn: Callable, values: Mapping[str, Any], *, only: Iterable[str]) -> dict[str, Any]:
    """Check a function's arguments (``values``: name → value) against its annotations; return
    them with numpy numbers as Python numbers. Names outside ``only`` are returned unchecked."""
    hints = _hints(fn)
    wanted = set(only)
    return {k: check_value(k, v, hints[k]) if k in wanted and k in hints else v for k, v in values.items()}


def check_call(
    fn: Callable,
    values: Mapping[str, Any],
    options: Mapping[str, Any],
    config_cls: type,
    *,
    where: str,
    exclude: Iterable[str] = (),
    also: Iterable[str] = (),
) -> None:
    """The checks of an entry point that builds ``config_cls`` from its own keyword arguments plus
    ``**options``: a misspelt option is the house-style error with the close names
    (:func:`cltx.errors.check_options`), and the named arguments (``values``: e.g. ``locals()`` on entry)
    are checked against ``fn``'s annotations before any comparison with them.

    Args:
        exclude: parameters that are neither options nor checked here (the positional inputs, objects such
            as a tokenizer or a progress sink, ``**options``).
        also: further accepted option names (translated by the caller).
    """
    skipped = set(exclude)
    params = [p for p in inspect.signature(fn).parameters if p not in skipped]
    fields = [f.name for f in dataclasses.fields(config_cls) if f.init]
    check_options(options, [*fields, *params, *also], where=where)
    check_args(fn, {k: values[k] for k in params if k in values}, only=params)


def checked_init(cls: type) -> type:
    """Class decorator (above ``@dataclass``): a misspelt keyword is the house-style error with the
    close names (:func:`cltx.errors.check_options`), not ``__init__() got an unexpected keyword
    argument``. The error is also a ``TypeError``, as Python's own is."""
    init = cls.__init__
    known = frozenset(f.name for f in dataclasses.fields(cls) if f.init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not known.issuperset(kwargs):
            check_options(kwargs, known, where=cls.__name__)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls
