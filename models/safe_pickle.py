"""Reading a pickled checkpoint as data: tensors and plain containers, never code, never class state.

``torch.load(weights_only=True)`` refuses any global outside torch's allowlist, which a Lightning
checkpoint always has (its hyper-parameters: an ``AttributeDict``, an OmegaConf ``DictConfig``,
callback state). ``restricted_pickle`` is the ``pickle_module`` torch.load then takes instead:

- ``find_class`` returns a global only from torch's weights-only allowlist (tensor rebuilders,
  storages, dtypes, ``OrderedDict``, ...); any other global becomes a fresh ``Inert`` subclass that
  takes any arguments and any state and runs nothing. No module is ever imported.
- Every opcode that mutates an object already built is checked against what it is applied to:
  ``BUILD`` (``__setstate__`` or instance/slot attributes) reaches only a torch ``Tensor`` or
  ``Parameter`` the way torch's own weights-only unpickler allows, an ``OrderedDict``'s instance
  dict (a state dict's ``_metadata``), or an ``Inert``, which absorbs it; ``SETITEM(S)`` only
  dicts and ``Inert``s; ``APPEND(S)`` only lists and ``Inert``s; ``ADDITEMS`` only sets.
  Anything else, above all a class object (``BUILD`` on ``collections.Counter`` would set a class
  attribute for the whole process), is refused with ``pickle.UnpicklingError`` before it changes
  anything.

This needs the pure-Python unpickler (the C one cannot be hooked per opcode); a state dict's
pickle is small (the tensors' bytes are read through ``persistent_load``), so it costs nothing
measurable next to reading the tensors.
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle

import torch


class Inert:
    """Stands for a global the unpickler does not allow: accepts any arguments, state, items and
    appends (pickle's NEWOBJ skips ``__init__``, so the storage is made in ``__new__``); runs
    nothing. ``of`` names the global it stands for."""

    of = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        object.__setattr__(obj, "_inert", {"args": args, "kwargs": kwargs, "state": None, "items": {}, "list": []})
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __repr__(self):
        return f"<not loaded: {self.of}>"


def _inert_class(module: str, name: str) -> type:
    return type(f"Inert_{name}", (Inert,), {"of": f"{module}.{name}", "__module__": __name__})


def _allowed_globals() -> dict:
    try:  # torch's own weights_only allowlist (tensors, storages, dtypes, OrderedDict, ...)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch without it: the minimum a state dict needs
        allowed = {"collections.OrderedDict": collections.OrderedDict,
                   "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                   "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter}
    for obj in torch.serialization.get_safe_globals():
        if not isinstance(obj, tuple):
            allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return allowed


_ALLOWED: dict | None = None


def _refuse(op: str, target) -> pickle.UnpicklingError:
    what = f"the class {target.__module__}.{target.__qualname__}" if isinstance(target, type) \
        else f"a {type(target).__module__}.{type(target).__qualname__} object"
    return pickle.UnpicklingError(f"checkpoint: refusing {op} on {what} (a checkpoint may hold tensors and plain "
                                  "containers only; this pickle would change a live object)")


class RestrictedUnpickler(pickle._Unpickler):
    """See the module doc. Subclass of the pure-Python unpickler so each mutating opcode is ours."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        if self.proto < 3 and self.fix_imports:  # Python 2 names (__builtin__.set), as pickle maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get(f"{module}.{name}")
        return found if found is not None else _inert_class(module, name)

    # -- the mutating opcodes ------------------------------------------------------------------
    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        kind = type(inst)
        if isinstance(inst, Inert):
            inst._inert["state"] = state
        elif kind is torch.Tensor:  # legacy tensor pickles, as torch's weights-only unpickler
            inst.set_(*state)
        elif kind is torch.nn.Parameter:
            inst.__setstate__(state)
        elif kind is collections.OrderedDict and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            inst.__dict__.update(state)  # a state dict's _metadata
        else:
            raise _refuse("BUILD (setting attributes)", inst)

    dispatch[pickle.BUILD[0]] = load_build

    def _set_items(self, target, pairs):
        if isinstance(target, Inert):
            target._inert["items"].update(pairs)
        elif type(target) in (dict, collections.OrderedDict):
            for k, v in pairs:
                target[k] = v
        else:
            raise _refuse("SETITEMS", target)

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [(key, value)])

    def load_setitems(self):
        items = self.pop_mark()
        self._set_items(self.stack[-1], list(zip(items[::2], items[1::2])))

    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def _append(self, target, values):
        if isinstance(target, Inert):
            target._inert["list"].extend(values)
        elif type(target) is list:
            target.extend(values)
        else:
            raise _refuse("APPENDS", target)

    def load_append(self):
        value = self.stack.pop()
        self._append(self.stack[-1], [value])

    def load_appends(self):
        items = self.pop_mark()
        self._append(self.stack[-1], items)

    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            target.update(items)
        elif isinstance(target, Inert):
            target._inert["list"].extend(items)
        else:
            raise _refuse("ADDITEMS", target)

    dispatch[pickle.ADDITEMS[0]] = load_additems


class restricted_pickle:  # lower case: stands in for the ``pickle`` module that torch.load takes
    """The ``pickle_module`` for ``torch.load``: only ``Unpickler`` and ``load`` are used."""

    Unpickler = RestrictedUnpickler
    __name__ = "asymvq.restricted_pickle"

    @staticmethod
    def load(f, **kwargs):
        return RestrictedUnpickler(f, **kwargs).load()
