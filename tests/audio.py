"""Small audio fixtures for the transcription/translation tests."""

from __future__ import annotations

import io
import wave


def make_wav(seconds: float = 0.1, *, rate: int = 16_000) -> bytes:
    """A valid mono 16-bit PCM WAV file of ``seconds`` of silence (0.1 s at 16 kHz: 3244 bytes)."""
    frames = round(seconds * rate)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * frames)
    return out.getvalue()
