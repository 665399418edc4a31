"""The schedulers asymvq runs (diffusers' classes), built by name from a scheduler config.

Copying a scheduler must keep every value it was given. diffusers' ``from_config`` drops
the keys listed in a config's ``_use_default_values`` (those the constructor defaulted), but
diffusers' own pipelines patch configs after construction (``steps_offset`` to 1, for one)
and the patched key stays listed there: rebuilt naively, a DDIM scheduler built with
``DDIMScheduler(beta_start=..., beta_end=..., beta_schedule=...)`` and patched by the pipeline
gives timesteps 750/500/250/0 instead of 751/501/251/1. ``scheduler_config`` therefore drops
a listed key only while it still holds the source class's default.
"""
from __future__ import annotations

import importlib
import inspect

SCHEDULERS = ("ddim", "pndm", "euler", "dpm++")
SCHEDULER_ALIASES = {"dpmsolver++": "dpm++", "dpm-solver++": "dpm++", "dpmpp": "dpm++", "euler-discrete": "euler"}
_CLASSES = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
            "dpm++": "DPMSolverMultistepScheduler"}
# What each kind adds to any config: SD ships PNDM without its PRK warm-up steps.
_OVERRIDES = {"pndm": {"skip_prk_steps": True}, "dpm++": {"algorithm_type": "dpmsolver++"}}


def scheduler_name(name: str) -> str:
    """The canonical name of ``name`` (aliases and case accepted); ValueError naming the choices otherwise."""
    key = SCHEDULER_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {name!r}")
    return key


def _diffusers_class(name: str):
    # diffusers is imported on first use, not with asymvq: importing it imports torch._dynamo,
    # which imports triton when installed, and `import asymvq` must load no optional toolchain.
    diffusers = importlib.import_module("diffusers")
    return getattr(diffusers, name, None) if name else None


def scheduler_config(config, source: type | None = None) -> dict:
    """``config`` (dict or FrozenDict) as ``from_config`` should see it: every value it holds, except
    listed defaults that still equal the default of ``source`` (the class the config comes from;
    read from ``_class_name`` when not given). With no known source every value is kept."""
    cfg = dict(config)
    defaulted = cfg.pop("_use_default_values", None) or []
    source = source or _diffusers_class(str(cfg.get("_class_name", "")))
    if source is None:
        return cfg
    params = inspect.signature(source.__init__).parameters
    for key in defaulted:
        if key in cfg and key in params and cfg[key] == params[key].default:
            del cfg[key]
    return cfg


def make_scheduler(name: str, config, source: type | None = None):
    """A fresh diffusers scheduler of kind ``name`` from a scheduler config (dict or FrozenDict) of a
    scheduler of class ``source`` (pass it for a live scheduler's ``.config``: see ``scheduler_config``)."""
    key = scheduler_name(name)
    cls = _diffusers_class(_CLASSES[key])
    return cls.from_config(scheduler_config(config, source), **_OVERRIDES.get(key, {}))


def switch_scheduler(name: str, scheduler):
    """A fresh scheduler of kind ``name`` with live ``scheduler``'s noise schedule and given values."""
    return make_scheduler(name, scheduler.config, type(scheduler))


def copy_scheduler(scheduler):
    """A fresh scheduler of the same class and config (its step state is not copied)."""
    return type(scheduler).from_config(scheduler_config(scheduler.config, type(scheduler)))


# The scheduler classes an engines directory of another family may name (SDXL's Euler, FLUX's flow matching).
FAMILY_SCHEDULER_CLASSES = (*_CLASSES.values(), "FlowMatchEulerDiscreteScheduler")


def make_family_scheduler(config: dict):
    """The scheduler an engines directory's config names by ``_class_name`` (one of FAMILY_SCHEDULER_CLASSES)."""
    name = str(config.get("_class_name", ""))
    if name not in FAMILY_SCHEDULER_CLASSES:
        raise ValueError(f"scheduler: the directory's config names {name!r}, expected one of "
                         f"{list(FAMILY_SCHEDULER_CLASSES)}")
    return _diffusers_class(name).from_config(scheduler_config(config))


def step_kwargs(scheduler, generator, eta: float) -> dict:
    """eta for DDIM, the generator for stochastic schedulers: what each ``step`` accepts (diffusers' rule)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs
