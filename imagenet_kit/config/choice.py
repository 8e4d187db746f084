"""A value outside its choices, as one error line: the key, the valid values and the nearest one."""
from __future__ import annotations

import difflib

from imagenet_kit.errors import ConfigError


def check_choice(key: str, value, allowed: tuple) -> None:
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    shown = ", ".join(repr(a) if a == "" else str(a) for a in allowed)
    raise ConfigError(f"{key}: {value!r} is not one of {shown}{hint}")
