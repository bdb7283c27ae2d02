"""Parsing of recipe-stage arguments into typed values (once, at recipe parse time)."""

from __future__ import annotations

import re

from ..errors import ConfigError
from ..types import NM, check_ratio

_NM = re.compile(r"^(\d+):(\d+)$")
_BITS = re.compile(r"^(?:w(\d+))?(?:a(\d+))?(?:kv(\d+))?$")
_GROUP = re.compile(r"^g(\d+)$")


def parse_float(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def parse_int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None


def parse_nm(value: str) -> NM:
    m = _NM.match(value.strip())
    if not m:
        raise ConfigError(f"N:M pattern must look like 2:4, got {value!r}")
    return NM(int(m.group(1)), int(m.group(2)))


def parse_sparsity(positional: list[str], keyword: dict[str, str]) -> tuple[float | None, NM | None]:
    """Pruning target: a ratio (`0.5`), an N:M pattern (`2:4`, or `nm=2:4`)."""
    ratio: float | None = None
    nm: NM | None = None
    for token in positional:
        if _NM.match(token):
            nm = parse_nm(token)
        else:
            ratio = check_ratio(parse_float(token, "sparsity ratio"))
    if "nm" in keyword:
        nm = parse_nm(keyword.pop("nm"))
    if "ratio" in keyword:
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


def pop_targets(keyword: dict[str, str]) -> tuple[str | None, str | None]:
    return keyword.pop("include", None), keyword.pop("exclude", None)


def reject_leftovers(name: str, positional: list[str], keyword: dict[str, str]) -> None:
    if positional or keyword:
        extra = positional + [f"{k}={v}" for k, v in keyword.items()]
        raise ConfigError(f"unknown argument(s) for {name}: {', '.join(extra)}")


def targets_suffix(include: str | None, exclude: str | None) -> list[str]:
    out = []
    if include is not None:
        out.append(f"include={include}")
    if exclude is not None:
        out.append(f"exclude={exclude}")
    return out
