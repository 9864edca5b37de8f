"""Benchmarks of ``asgi_llm_guard``: ``python -m benchmarks`` (see ``benchmarks/README.md``)."""
