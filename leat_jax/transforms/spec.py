"""Transform specifications: which kinds exist, their parameters and ranges, and the text form.

Grammar of a spec (``parse`` reads it, ``to_text`` writes it)::

    spec  := item ("," item)*
    item  := KIND [":" param ("," param)*]
    param := NAME "=" NUMBER ["-" NUMBER]        # a range lo-hi; one number means fixed

e.g. ``jpeg:quality=50-95,resize:factor=0.5-1.0,jitter:shift=-4-4,angle=-5-5,round8``. A comma-separated part
with no ``:`` that has an ``=`` continues the previous kind's parameters. Parameters left out take their kind's
default range; every parameter is drawn uniformly from its range, independently, for each application.
"""

import dataclasses
import re

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
    """

    name: str
    ranges: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self):
        if self.name not in PARAMETERS:
            raise TransformSpecError(f"unknown transform {self.name!r} (known: {', '.join(PARAMETERS)})")
        given = {}
        for entry in self.ranges:
            if len(entry) != 3:
                raise TransformSpecError(f"{self.name}: range {entry!r} is not (parameter, lo, hi)")
            name, lo, hi = entry
            if name in given:
                raise TransformSpecError(f"{self.name}: parameter {name!r} given twice")
            given[name] = (float(lo), float(hi))
        canonical = tuple(_checked(self.name, p, given.pop(p[0], (p[1], p[2]))) for p in PARAMETERS[self.name])
        if given:
            known = ", ".join(p[0] for p in PARAMETERS[self.name]) or "none"
            raise TransformSpecError(f"{self.name}: unknown parameter {next(iter(given))!r} (known: {known})")
        object.__setattr__(self, "ranges", canonical)

    def range(self, parameter: str) -> tuple[float, float]:
        """The (lo, hi) range of one parameter of this transform."""
        return next((lo, hi) for name, lo, hi in self.ranges if name == parameter)


def _checked(kind, parameter, value):
    """Validates one parameter's (lo, hi) against its allowed interval; returns (name, lo, hi)."""
    name, _, _, low, high, exclusive = parameter
    lo, hi = value
    if lo > hi:
        raise TransformSpecError(f"{kind}: {name} range {_number(lo)}-{_number(hi)} has lo > hi")
    for v in (lo, hi):
        if not (low < v if exclusive else low <= v) or v > high:
            bracket = "(" if exclusive else "["
            raise TransformSpecError(f"{kind}: {name}={_number(v)} out of range, must be within "
                                     f"{bracket}{_number(low)}, {_number(high)}]")
        if name in INTEGER_PARAMETERS and v != int(v):
            raise TransformSpecError(f"{kind}: {name}={_number(v)} must be an integer")
    return (name, lo, hi)


def _number(v: float) -> str:
    """Shortest text of a float that reads back equal (integers without a decimal point)."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def parse(text: str) -> tuple[Transform, ...]:
    """Reads a transform chain from its text form (grammar in the module docstring).

    Args:
        text: e.g. ``"jpeg:quality=50-95,resize:factor=0.5-1.0,jitter,round8"``.
    Returns:
        The chain, in the order written (applied in that order).
    Raises:
        TransformSpecError: a one-line message naming the bad part (unknown kind or parameter, malformed value,
            value out of its allowed range).
    """
    items = []  # [kind, [(name, lo, hi), ...]]
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise TransformSpecError(f"empty item in transform spec {text!r}")
        if ":" in part or "=" not in part:
            kind, _, part = part.partition(":")
            items.append((kind.strip(), []))
            if not part.strip():
                continue
        if not items:
            raise TransformSpecError(f"parameter {part!r} before any transform kind")
        items[-1][1].append(_parameter(items[-1][0], part))
    return tuple(Transform(kind, tuple(ranges)) for kind, ranges in items)


def _parameter(kind: str, part: str) -> tuple[str, float, float]:
    """Reads ``NAME=LO[-HI]`` into (name, lo, hi)."""
    name, eq, value = part.partition("=")
    match = _VALUE.match(value) if eq else None
    if match is None:
        raise TransformSpecError(f"{kind}: bad parameter {part.strip()!r} (expected NAME=VALUE or NAME=LO-HI)")
    lo = float(match.group(1))
    hi = float(match.group(2)) if match.group(2) is not None else lo
    return (name.strip(), lo, hi)


def to_text(chain) -> str:
    """Writes a chain in the text form ``parse`` reads, every parameter explicit (canonical: equal chains give
    equal text, so it can go into settings hashes and reports).

    Args:
        chain: a sequence of ``Transform``.
    Returns:
        The text; ``parse(to_text(chain)) == tuple(chain)``.
    """
    items = []
    for t in chain:
        params = ",".join(f"{n}={_number(lo)}" + ("" if lo == hi else f"-{_number(hi)}") for n, lo, hi in t.ranges)
        items.append(f"{t.name}:{params}" if params else t.name)
    return ",".join(items)


# Robust mode's default chain: a JPEG re-encoding at quality 50-95, then the 8-bit file. Chosen by measurement
# over three chains (benchmarks/RESULTS.md, "Robust mode"): adding a 0.5-1.0 resize tied it overall and fell
# below plain LEAT after re-encoding for one victim; adding re-alignment jitter lost e4e and simswap_id nearly all
# their distortion. Resize and jitter stay available by name (``--transforms``).
ROBUST_DEFAULT = (Transform("jpeg"), Transform("round8"))
