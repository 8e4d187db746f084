"""The kit's one error base class.

Every expected failure (a bad recipe key, a missing beton, an unreadable checkpoint, an export that fails its
parity check, ...) raises a ``KitError`` subclass whose message names the file or key and says what to do.
The CLI prints it as one ``error:`` line and exits with code 2, with no traceback; anything else is a bug and
keeps its traceback.

Inference-only (no imports): the Hugging Face Space folder ships a copy of this file with the demo.
"""
from __future__ import annotations

EXIT_CODE = 2


class KitError(Exception):
    """An expected error: the message is the whole story for the user."""


class ConfigError(KitError, ValueError):
    """A recipe or override that cannot be applied; the message names the key or file."""
