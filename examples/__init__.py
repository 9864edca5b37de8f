"""Example services guarded by asgi_llm_guard: ``fastapi_app.py`` and ``litestar_app.py``.

Both serve the same OpenAI-compatible routes from :mod:`examples.model` and run the LiteLLM-style handler of
:mod:`examples.hooks`. Run one with ``python examples/fastapi_app.py`` (port 4000, or ``PORT``).
"""
