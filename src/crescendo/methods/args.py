"""Parsing of recipe-stage arguments into typed values (once, at recipe parse time).

Each config class's `parse` consumes the arguments it understands from `positional` / `keyword`
with these helpers and ends with `reject_leftovers`, so a misspelt or repeated argument is an error.
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError
from ..types import NM, Targets, check_ratio

_NM = re.compile(r"^(\d+):(\d+)$")
_BITS = re.compile(r"^(?:w(\d+))?(?:a(\d+))?(?:kv(\d+))?$")
_GROUP = re.compile(r"^g(\d+)$")


def parse_float(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return number


def parse_int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None


def parse_nm(value: str) -> NM:
    return NM.parse(value)


def parse_sparsity(positional: list[str], keyword: dict[str, str]) -> tuple[float | None, NM | None]:
    """Pruning target: a ratio (`0.5`) or an N:M pattern (`2:4`, or `nm=2:4`); consumes them."""
    ratio: float | None = None
    nm: NM | None = None
    for token in list(positional):
        if _NM.match(token):
            if nm is not None:
                raise ConfigError(f"N:M pattern given twice ({nm} and {token})")
            nm = parse_nm(token)
        else:
            try:
                float(token)
            except ValueError:
                continue  # not a sparsity token: left for the caller
            if ratio is not None:
                raise ConfigError(f"sparsity ratio given twice ({ratio:g} and {token})")
            ratio = check_ratio(parse_float(token, "sparsity ratio"))
        positional.remove(token)
    if "nm" in keyword:
        if nm is not None:
            raise ConfigError("N:M pattern given twice")
        nm = parse_nm(keyword.pop("nm"))
    if "ratio" in keyword:
        if ratio is not None:
            raise ConfigError("sparsity ratio given twice")
        ratio = check_ratio(parse_float(keyword.pop("ratio"), "sparsity ratio"))
    if ratio is None and nm is None:
        raise ConfigError("a pruning stage needs a ratio (e.g. 0.5) or an N:M pattern (e.g. 2:4)")
    if ratio is not None and nm is not None and abs(ratio - nm.ratio) > 1e-9:
        raise ConfigError(f"ratio {ratio} disagrees with N:M pattern {nm} ({nm.ratio})")
    return (None if nm is not None else ratio), nm


def parse_bits_token(token: str) -> tuple[int | None, int | None, int | None] | None:
    """`w4`, `w4a8`, `a8`, `w4a4kv4` -> (w, a, kv); None if the token is not a bit-width token."""
    m = _BITS.match(token)
    if not m or not token:
        return None
    return tuple(int(g) if g is not None else None for g in m.groups())  # type: ignore[return-value]


def parse_group(token: str) -> int | None:
    m = _GROUP.match(token)
    return int(m.group(1)) if m else None


def pop_targets(keyword: dict[str, str]) -> Targets:
    return Targets(keyword.pop("include", None), keyword.pop("exclude", None))


def pop_flag(positional: list[str], *names: str) -> bool:
    """Whether one of `names` is among the positional arguments (consumed)."""
    found = [p for p in positional if p.lower() in names]
    for p in found:
        positional.remove(p)
    return bool(found)


def reject_leftovers(name: str, positional: list[str], keyword: dict[str, str]) -> None:
    if positional or keyword:
        extra = positional + [f"{k}={v}" for k, v in keyword.items()]
        raise ConfigError(f"unknown argument(s) for {name}: {', '.join(extra)}")
