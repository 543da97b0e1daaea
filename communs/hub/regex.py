"""Regular expressions of queries (``~=`` in ``q``, ``idPattern``), run by RE2.

RE2 matches in time linear in the text whatever the pattern, so no query can stall the
server with catastrophic backtracking (ReDoS). Its syntax is Perl's and POSIX's
(``[[:alpha:]]`` included) without backreferences and lookaround, which it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.max_mem = 8 << 20


class RegexError(ValueError):
    """A pattern RE2 does not accept; the message says why."""


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern; equal to another compiled from the same source."""

    pattern: str
    compiled: Any = field(compare=False, repr=False)

    def search(self, text: str) -> Any:
        return self.compiled.search(text)


def compile_regex(source: str) -> Pattern:
    try:
        return Pattern(source, re2.compile(source, _OPTIONS))
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(str(reason)) from error
