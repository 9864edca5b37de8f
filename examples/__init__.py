"""Example services guarded by asgi_llm_guard: ``fastapi_app.py`` and ``litestar_app.py``.

Both serve the same OpenAI-compatible routes and Anthropic's ``/v1/messages`` from :mod:`examples.model` and run
the LiteLLM-style handler of :mod:`examples.hooks`. Run one with ``python examples/fastapi_app.py`` (port 4000) or
``python examples/litestar_app.py`` (port 4001); ``PORT`` overrides either.
"""
