"""The rules every inpainting job's values obey, written once for ``asymvq inpaint`` and both HTTP servers.

``check_job`` is called where the job is parsed (the CLI's options before any model is built; the HTTP
form in ``asymvq.serve.http_form`` before the request takes a place in the queue), so a bad value is refused
in milliseconds and never waits behind other requests. The messages name the argument the caller
knows (``--seed`` on the command line, ``seed`` in the form): ``names`` maps one to the other.

Prompts are bounded in UTF-8 bytes before anything tokenizes them: CLIP reads 77 tokens and the
tokenizer would truncate the rest, but only after splitting the whole text (a 30 MiB prompt held the
pipeline for minutes). ``PROMPT_MAX_BYTES`` is far above what 77 tokens can hold (a CLIP token covers
at least one byte of text), so no prompt the model can read is refused; past it the prompt is refused,
not cut, so the client learns that the text was not all read.
"""
from __future__ import annotations

from .checks import is_number
from .family_rules import RULES, SD, family_rules
from .schedulers import SCHEDULER_ALIASES, SCHEDULERS

PROMPT_MAX_BYTES = 4096  # prompt and negative_prompt, each, in UTF-8 bytes
# Every family's schedulers index tables of their 1000 training timesteps (num_train_timesteps); more
# inference steps than that step past them (DDIM: IndexError in scheduling_ddim.step), so no bound
# given with --max-steps lifts this one.
STEPS_MAX = 1000
SEED_MAX = 2**63 - 1  # torch.Generator().manual_seed's range
GUIDANCE_RANGE = RULES[SD].guidance_range  # SD's and SDXL's; each family's: asymvq.pipeline.family_rules
ARGS = ("prompt", "negative_prompt", "steps", "guidance", "seed", "strength", "scheduler")


def check_prompt(text, arg: str = "prompt", required: bool = True) -> str | None:
    if text is None and not required:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{arg}: expected text, got {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > PROMPT_MAX_BYTES:
        raise ValueError(f"{arg}: expected at most {PROMPT_MAX_BYTES} bytes of UTF-8 text (CLIP reads 77 tokens), "
                         f"got {size}")
    return text


def check_steps(steps, max_steps: int | None = None, arg: str = "steps") -> int:
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise ValueError(f"{arg}: expected an integer, got {steps!r}")
    hi = STEPS_MAX if max_steps is None else min(max_steps, STEPS_MAX)
    if not 1 <= steps <= hi:
        raise ValueError(f"{arg}: expected a value in [1, {hi}], got {steps}")
    return steps


def check_guidance(guidance, arg: str = "guidance", family: str | None = None) -> float:
    rules = family_rules(family)
    lo, hi = rules.guidance_range
    if not is_number(guidance) or not lo <= guidance <= hi:
        what = "" if rules.name == SD else f" for {rules.label}"
        raise ValueError(f"{arg}: expected a value in [{lo:g}, {hi:g}]{what}, got {guidance!r}")
    return float(guidance)


def check_seed(seed, arg: str = "seed") -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{arg}: expected a value in [0, {SEED_MAX}], got {seed!r}")
    return seed


def denoising_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` a ``strength`` runs (diffusers' rule: the last ``int(steps * strength)``)."""
    return min(int(steps * strength), steps)


def check_strength(strength, steps: int, arg: str = "strength") -> float:
    if not is_number(strength) or not 0.0 < strength <= 1.0:
        raise ValueError(f"{arg}: expected a value in (0, 1], got {strength!r}")
    if denoising_steps(steps, strength) < 1:
        raise ValueError(f"{arg}: expected a value that leaves at least one of the {steps} denoising steps "
                         f"(strength x steps >= 1), got {strength}")
    return float(strength)


def check_scheduler(name, arg: str = "scheduler", family: str | None = None) -> str | None:
    """None (the pipeline's default) or a canonical name among ``SCHEDULERS``; aliases and case accepted."""
    if name is None:
        return None
    rules = family_rules(family)
    if not rules.schedulers:
        raise ValueError(f"{arg}: {rules.label} runs its own flow-matching scheduler only; leave it unset, "
                         f"got {str(name)[:40]!r}")
    key = SCHEDULER_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in SCHEDULERS:
        raise ValueError(f"{arg}: expected one of {list(SCHEDULERS)}, got {str(name)[:40]!r}")
    return key


def check_negative_prompt(text, arg: str = "negative_prompt", family: str | None = None) -> str | None:
    rules = family_rules(family)
    if text is not None and not rules.negative_prompt:
        raise ValueError(f"{arg}: {rules.label} has no classifier-free guidance, so no negative prompt; drop it")
    return check_prompt(text, arg, required=False)


def check_job(*, prompt, negative_prompt=None, steps=50, guidance=None, seed=0, strength=1.0, scheduler=None,
              max_steps: int | None = None, names: dict[str, str] | None = None, family: str | None = None) -> dict:
    """The job's values checked in the order a reader meets them; the first bad one is the ValueError.
    Returns them normalised (canonical scheduler name, floats as floats). ``family``: the pipeline family's
    rules (``asymvq.pipeline.family_rules``; default SD's); ``guidance`` None is the family's default."""
    n = {a: a for a in ARGS} | (names or {})
    steps = check_steps(steps, max_steps, n["steps"])
    guidance = family_rules(family).default_guidance if guidance is None else guidance
    return dict(
        prompt=check_prompt(prompt, n["prompt"]),
        negative_prompt=check_negative_prompt(negative_prompt, n["negative_prompt"], family),
        steps=steps, guidance=check_guidance(guidance, n["guidance"], family), seed=check_seed(seed, n["seed"]),
        strength=check_strength(strength, steps, n["strength"]),
        scheduler=check_scheduler(scheduler, n["scheduler"], family),
    )


def check_image_size(width: int, height: int, arg: str = "image", family: str | None = None) -> None:
    """An image the family's pipeline takes at its own size: width and height multiples of its factor (the
    pipeline would otherwise round down and resize: a silently different image)."""
    rules = family_rules(family)
    m = rules.size_multiple
    if width % m or height % m:
        why = "" if rules.name == SD else f" for {rules.label}"
        raise ValueError(f"{arg}: expected width and height multiples of {m}{why}, got {width}x{height} (WxH)")
