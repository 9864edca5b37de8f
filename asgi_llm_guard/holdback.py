"""The hold-back window a ``post_call`` guardrail applies to streamed text (see ``docs/guardrails.md``).

Streamed text reaches the client only after a guardrail has seen it. Text is released in windows: the guardrail
is called once the text not yet released reaches ``holdback + check_every`` characters, on that text alone (the
held-back tail of the last window plus what came since), and once more when the text ends. Of what it returns,
all is released but the last ``holdback`` characters, which are kept, as the stream sent them, to be checked
again with what follows. So a pattern of up to ``holdback + 1`` characters split across chunks, or across
windows, is always seen whole by one call, and the guardrail is called about ``length / check_every`` times on
windows of about ``holdback + check_every`` characters: linear in the stream, never the whole text per chunk
(LiteLLM's per-chunk hook re-reads the whole text each time: quadratic).

Only text the guardrail left unchanged at the end of the window is held back (the cut is made after the last
change), so a masked span always goes out whole, masked; the cut prefers a whitespace boundary within twice the
hold-back so that a word is checked whole.
"""

from __future__ import annotations

#: Characters held back by default when the guardrail sets no ``stream_holdback_chars``.
DEFAULT_HOLDBACK_CHARS = 64
#: New characters between two guardrail calls by default (``stream_check_chars``).
DEFAULT_CHECK_CHARS = 128
_MAX_HOLDBACK = 65536


def _common_suffix(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    n = 0
    while n < limit and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class HeldText:
    """One stream channel's text on its way through a guardrail::

        held = HeldText(holdback=8, check_every=16)
        if held.add(delta):                       # a window is due
            out = held.release(await guard(held.window), final=False)
        ...
        out = held.release(await guard(held.window), final=True)   # at the end of the text
    """

    __slots__ = ("window", "holdback", "check_every")

    def __init__(self, holdback: int = DEFAULT_HOLDBACK_CHARS, check_every: int = DEFAULT_CHECK_CHARS) -> None:
        self.window = ""  # received, not released: the held-back tail and what came since
        self.holdback = holdback
        self.check_every = check_every

    def add(self, text: str) -> bool:
        """Take a piece of text; ``True`` when the window is long enough to be checked."""
        self.window += text
        return len(self.window) >= self.holdback + self.check_every

    def set_holdback(self, chars: object) -> None:
        """Use the hold-back a guardrail's result asked for (``stream_holdback_chars``), within bounds."""
        if isinstance(chars, (list, tuple)):
            chars = chars[0] if chars else None
        if isinstance(chars, int) and not isinstance(chars, bool) and chars >= 0:
            self.holdback = min(chars, _MAX_HOLDBACK)

    def release(self, guarded: str, final: bool) -> str:
        """What may go to the client now, given the guardrail's text for :attr:`window`; the rest is kept."""
        raw = self.window
        if final:
            self.window = ""
            return guarded
        unchanged = _common_suffix(raw, guarded)
        keep = min(self.holdback, unchanged)
        if 0 < self.holdback < unchanged:
            # Prefer to cut before a whitespace (a word is then checked whole next time), holding back at most
            # twice the hold-back.
            low = len(raw) - min(unchanged, 2 * self.holdback)
            high = len(raw) - self.holdback
            for cut in range(high, low - 1, -1):
                if raw[cut].isspace():
                    keep = len(raw) - cut
                    break
        self.window = raw[len(raw) - keep :] if keep else ""
        return guarded[: len(guarded) - keep]

    def release_unchecked(self) -> str:
        """Everything held, as received (a guardrail that timed out with ``fail_open``)."""
        text, self.window = self.window, ""
        return text
