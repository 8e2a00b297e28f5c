"""Fake upstreams for tests (see :mod:`tests.fakes.ollama`)."""

from tests.fakes.ollama import REPLY_TEXT, REPLY_TOKENS, FakeOllama, Recorded

__all__ = ["REPLY_TEXT", "REPLY_TOKENS", "FakeOllama", "Recorded"]
