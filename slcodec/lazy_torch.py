"""``torch`` imported on first use.

The codec modules define more than tensor code: their options (the CLI flags), their config
rules and the checks of a file's parameters and streams.  Those run in ``slcodec verify``,
``info`` and ``stats``, which must start fast and work without torch, so the codec modules
bind ``torch`` to a :func:`lazy_import` placeholder instead of importing it at load time.
"""
from __future__ import annotations

import functools
import importlib


class _LazyModule:
    """Stands for a module until an attribute is read; then imports it and rebinds the owner's
    global name to the real module, so later lookups cost nothing extra."""

    def __init__(self, name: str, owner_globals: dict, bound_as: str):
        self.__dict__.update(_name=name, _owner=owner_globals, _bound_as=bound_as)

    def __getattr__(self, attr):
        module = importlib.import_module(self.__dict__["_name"])
        owner = self.__dict__["_owner"]
        if owner.get(self.__dict__["_bound_as"]) is self:
            owner[self.__dict__["_bound_as"]] = module
        return getattr(module, attr)

    def __repr__(self):
        return f"<lazy module {self.__dict__['_name']!r}>"


def lazy_import(name: str, owner_globals: dict, bound_as: str | None = None):
    """A placeholder for module ``name``, to be bound to ``owner_globals[bound_as]`` (default: the
    last part of ``name``); the first attribute read imports the module and replaces it."""
    return _LazyModule(name, owner_globals, bound_as or name.rsplit(".", 1)[-1])


def no_grad(fn):
    """``@torch.no_grad()`` for a function (not a generator), importing torch only when it is called."""
    @functools.wraps(fn)
    def without_grad(*args, **kwargs):
        import torch
        with torch.no_grad():
            return fn(*args, **kwargs)
    return without_grad
