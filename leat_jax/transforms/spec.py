"""Transform specifications: which kinds exist, their parameters and ranges, and the text form.

Grammar of a spec (``parse`` reads it, ``to_text`` writes it)::

    spec  := item ("," item)*
    item  := KIND [":" param ("," param)*]
    param := NAME "=" NUMBER ["-" NUMBER]        # a range lo-hi; one number means fixed
           | NAME "=" WORD                       # a word parameter: one of its words, never a range

e.g. ``jpeg:quality=50-95,gradient=cubic,resize:factor=0.5-1.0,jitter:shift=-4-4,angle=-5-5,round8``. A
comma-separated part with no ``:`` that has an ``=`` continues the previous kind's parameters. Numeric parameters
left out take their kind's default range; each is drawn uniformly from its range, independently, for each
application. Word parameters (``WORD_PARAMETERS``) are fixed per transform: ``jpeg``'s ``gradient`` is the
quantisation rounding's surrogate slope, ``square`` (the default, ``jpeg.GRADIENT``), ``cubic`` or ``identity``
(``jpeg.quantise``). ``to_text`` writes a word parameter only when it differs from its default, so a chain's
text, and the settings hashes made from it, read as they did before the parameter existed.
"""

import dataclasses
import re

from leat_jax.transforms import jpeg

# kind -> ((parameter, default lo, default hi, allowed min, allowed max, min exclusive), ...); a kind's
# parameters are kept in this order so that equal specs are equal (and hash equally) however written.
PARAMETERS = {
    "identity": (),
    "round8": (),
    "jpeg": (("quality", 50.0, 95.0, 1.0, 100.0, False),),
    "resize": (("factor", 0.5, 1.0, 0.0, 1.0, True),),
    "blur": (("sigma", 0.5, 1.5, 0.0, 8.0, False),),
    "jitter": (
        ("shift", -3.0, 3.0, -32.0, 32.0, False),
        ("scale", 0.95, 1.05, 0.5, 2.0, False),
        ("angle", -5.0, 5.0, -45.0, 45.0, False),
    ),
    "noise": (("std", 0.0, 4.0, 0.0, 64.0, False),),
}
INTEGER_PARAMETERS = frozenset({"quality"})
# kind -> ((parameter, default, allowed words), ...): parameters valued by a word, kept in this order as well.
WORD_PARAMETERS = {
    "jpeg": (("gradient", jpeg.GRADIENT, jpeg.GRADIENTS),),
}

_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_VALUE = re.compile(rf"^\s*({_NUMBER})\s*(?:-\s*({_NUMBER})\s*)?$")


class TransformSpecError(ValueError):
    """A transform spec that cannot be used; the message is one line naming the bad part."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """One kind of transform with the ranges its parameters are drawn from (frozen, hashable, canonical).

    Attributes:
        name: one of ``PARAMETERS`` ("jpeg", "resize", "blur", "jitter", "noise", "round8", "identity").
        ranges: ``((parameter, lo, hi), ...)``; lo == hi means fixed. Parameters left out get the kind's default
            and the tuple is put in the kind's order, so ``Transform("jpeg")`` equals ``parse("jpeg")``.
        words: ``((parameter, word), ...)`` for the kind's ``WORD_PARAMETERS`` (``(("gradient", "cubic"),)`` for
            ``jpeg``); filled and ordered as ``ranges``, so ``Transform("jpeg")`` equals
            ``parse("jpeg:gradient=square")`` while square is the default.
    """

    name: str
    ranges: tuple[tuple[str, float, float], ...] = ()
    words: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        _check_kind(self.name)
        object.__setattr__(self, "ranges", _canonical_ranges(self.name, self.ranges))
        object.__setattr__(self, "words", _canonical_words(self.name, self.words))

    def range(self, parameter: str) -> tuple[float, float]:
        """The (lo, hi) range of one parameter of this transform."""
        return next((lo, hi) for name, lo, hi in self.ranges if name == parameter)

    def word(self, parameter: str) -> str:
        """The value of one word parameter of this transform (e.g. ``jpeg``'s ``gradient``)."""
        return next(word for name, word in self.words if name == parameter)


def _check_kind(kind: str) -> None:
    """Raises ``TransformSpecError`` unless ``kind`` is one of ``PARAMETERS``."""
    if kind not in PARAMETERS:
        raise TransformSpecError(f"unknown transform {kind!r} (known: {', '.join(PARAMETERS)})")


def _known(kind: str) -> str:
    """The names of a kind's parameters, numeric then word, for error messages."""
    return ", ".join([p[0] for p in PARAMETERS[kind]] + [p[0] for p in WORD_PARAMETERS.get(kind, ())]) or "none"


def _word_names(kind: str) -> tuple[str, ...]:
    """The names of a kind's word parameters (none for most kinds)."""
    return tuple(p[0] for p in WORD_PARAMETERS.get(kind, ()))


def _canonical_ranges(kind, ranges):
    """Checks ``(parameter, lo, hi)`` entries and fills in the defaults, in the kind's order."""
    given = {}
    for entry in ranges:
        if len(entry) != 3:
            raise TransformSpecError(f"{kind}: range {entry!r} is not (parameter, lo, hi)")
        name, lo, hi = entry
        if name in given:
            raise TransformSpecError(f"{kind}: parameter {name!r} given twice")
        if name in _word_names(kind):
            raise TransformSpecError(f"{kind}: {name} takes a word ({_allowed(kind, name)}), not a range")
        try:
            given[name] = (float(lo), float(hi))
        except (TypeError, ValueError):
            raise TransformSpecError(f"{kind}: {name} range {entry!r} is not numbers") from None
    canonical = tuple(_checked(kind, p, given.pop(p[0], (p[1], p[2]))) for p in PARAMETERS[kind])
    if given:
        raise TransformSpecError(f"{kind}: unknown parameter {next(iter(given))!r} (known: {_known(kind)})")
    return canonical


def _canonical_words(kind, words):
    """Checks ``(parameter, word)`` entries and fills in the defaults, in the kind's order."""
    given = {}
    for entry in words:
        if len(entry) != 2:
            raise TransformSpecError(f"{kind}: word {entry!r} is not (parameter, word)")
        name, word = entry
        if name in given:
            raise TransformSpecError(f"{kind}: parameter {name!r} given twice")
        if any(name == p[0] for p in PARAMETERS[kind]):
            raise TransformSpecError(f"{kind}: {name} takes a number or a range LO-HI, not a word")
        if name not in _word_names(kind):
            raise TransformSpecError(f"{kind}: unknown parameter {name!r} (known: {_known(kind)})")
        if word not in _allowed_words(kind, name):
            raise TransformSpecError(f"{kind}: {name}={word} is not one of {_allowed(kind, name)}")
        given[name] = word
    return tuple((name, given.get(name, default)) for name, default, _ in WORD_PARAMETERS.get(kind, ()))


def _allowed_words(kind: str, parameter: str) -> tuple[str, ...]:
    """The words one word parameter accepts."""
    return next(words for name, _, words in WORD_PARAMETERS[kind] if name == parameter)


def _allowed(kind: str, parameter: str) -> str:
    """The allowed words of a word parameter, for error messages: "square, cubic or identity"."""
    words = _allowed_words(kind, parameter)
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _checked(kind, parameter, value):
    """Validates one parameter's (lo, hi) against its allowed interval; returns (name, lo, hi)."""
    name, _, _, low, high, exclusive = parameter
    lo, hi = value
    if lo > hi:
        raise TransformSpecError(f"{kind}: {name} range {_number(lo)}-{_number(hi)} has lo > hi")
    for v in (lo, hi):
        if not (low < v if exclusive else low <= v) or v > high:
            raise TransformSpecError(f"{kind}: {name}={_number(v)} out of range, must be within "
                                     f"{_interval(parameter)}")
        if name in INTEGER_PARAMETERS and v != int(v):
            raise TransformSpecError(f"{kind}: {name}={_number(v)} must be an integer")
    return (name, lo, hi)


def _interval(parameter) -> str:
    """A numeric parameter's allowed interval as text: "[1, 100]", "(0, 1]"."""
    _, _, _, low, high, exclusive = parameter
    return f"{'(' if exclusive else '['}{_number(low)}, {_number(high)}]"


def _number(v: float) -> str:
    """Shortest text of a float that reads back equal (integers without a decimal point)."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def parse(text: str) -> tuple[Transform, ...]:
    """Reads a transform chain from its text form (grammar in the module docstring).

    Args:
        text: e.g. ``"jpeg:quality=50-95,gradient=cubic,resize:factor=0.5-1.0,jitter,round8"``.
    Returns:
        The chain, in the order written (applied in that order).
    Raises:
        TransformSpecError: a one-line message naming the bad part (unknown kind or parameter, malformed value,
            value out of its allowed range, a word where a number belongs or the reverse).
    """
    items = []  # [kind, [(name, lo, hi), ...], [(name, word), ...]]
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise TransformSpecError(f"empty item in transform spec {text!r}")
        if ":" in part or "=" not in part:
            kind, _, part = part.partition(":")
            _check_kind(kind.strip())
            items.append((kind.strip(), [], []))
            if not part.strip():
                continue
        if not items:
            raise TransformSpecError(f"parameter {part!r} before any transform kind")
        kind, ranges, words = items[-1]
        if part.partition("=")[0].strip() in _word_names(kind):
            words.append(_word(kind, part))
        else:
            ranges.append(_parameter(kind, part))
    return tuple(Transform(kind, tuple(ranges), tuple(words)) for kind, ranges, words in items)


def _parameter(kind: str, part: str) -> tuple[str, float, float]:
    """Reads ``NAME=LO[-HI]`` into (name, lo, hi)."""
    name, eq, value = part.partition("=")
    match = _VALUE.match(value) if eq else None
    if match is None:
        spec = next((p for p in PARAMETERS[kind] if p[0] == name.strip()), None)
        if spec is None:
            raise TransformSpecError(f"{kind}: unknown parameter {name.strip()!r} (known: {_known(kind)})")
        raise TransformSpecError(f"{kind}: bad parameter {part.strip()!r} (expected a number or a range LO-HI "
                                 f"within {_interval(spec)})")
    lo = float(match.group(1))
    hi = float(match.group(2)) if match.group(2) is not None else lo
    return (name.strip(), lo, hi)


def _word(kind: str, part: str) -> tuple[str, str]:
    """Reads ``NAME=WORD`` of a word parameter into (name, word)."""
    name, _, value = (s.strip() for s in part.partition("="))
    if value not in _allowed_words(kind, name):
        why = ", not a number" if _VALUE.match(value) else ", not a range" if "-" in value else ""
        raise TransformSpecError(f"{kind}: bad parameter {part.strip()!r} ({name} must be one of "
                                 f"{_allowed(kind, name)}{why})")
    return (name, value)


def to_text(chain) -> str:
    """Writes a chain in the text form ``parse`` reads (canonical: equal chains give equal text, so it can go
    into settings hashes and reports): every numeric parameter explicit, word parameters only where they differ
    from their default (so a chain with the defaults reads as before word parameters existed).

    Args:
        chain: a sequence of ``Transform``.
    Returns:
        The text; ``parse(to_text(chain)) == tuple(chain)``.
    """
    items = []
    for t in chain:
        params = [f"{n}={_number(lo)}" + ("" if lo == hi else f"-{_number(hi)}") for n, lo, hi in t.ranges]
        defaults = dict((p[0], p[1]) for p in WORD_PARAMETERS.get(t.name, ()))
        params += [f"{n}={w}" for n, w in t.words if w != defaults[n]]
        items.append(f"{t.name}:{','.join(params)}" if params else t.name)
    return ",".join(items)


# Robust mode's default chain: a JPEG re-encoding at quality 50-95, then the 8-bit file. Chosen by measurement
# over three chains (benchmarks/RESULTS.md, "Robust mode"): adding a 0.5-1.0 resize tied it overall and fell
# below plain LEAT after re-encoding for one victim; adding re-alignment jitter lost e4e and simswap_id nearly all
# their distortion. Resize and jitter stay available by name (``--transforms``).
ROBUST_DEFAULT = (Transform("jpeg"), Transform("round8"))
