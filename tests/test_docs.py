"""The documentation: the site builds strictly, and every code sample a reader can copy runs as written.

Samples live in files (``examples/quickstart.py``, ``docs/snippets/*.py``) that the pages include with
pymdownx.snippets, so what is tested is what is shown; the README cannot include files, so its example is
extracted from README.md and compared with (and run like) ``examples/quickstart.py``.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps import Downstream

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = sorted((ROOT / "docs" / "snippets").glob("*.py"))


def test_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, missing anchors, missing pages or included files fail the build (mkdocs --strict)."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "reference" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_every_snippet_is_included_by_a_page() -> None:
    pages = "".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    for snippet in [*SNIPPETS, ROOT / "examples" / "quickstart.py"]:
        assert f'--8<-- "{snippet.relative_to(ROOT)}"' in pages, f"{snippet.name} is shown on no page"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_example_is_the_quickstart_file() -> None:
    """The README's example is examples/quickstart.py, verbatim, so the file the docs include is the one shown."""
    quickstart = (ROOT / "examples" / "quickstart.py").read_text()
    assert quickstart in readme_python_blocks()


def readme_app() -> Any:
    """The README's example as written (extracted from README.md), run as a module of its own."""
    (source,) = [block for block in readme_python_blocks() if "@app.post" in block and "LLMHookMiddleware" in block]
    module = types.ModuleType("readme_example")
    exec(compile(source, "README.md", "exec"), module.__dict__)
    return module.app


async def post(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post(path, json=body)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}


async def test_readme_example_answers_through_its_route() -> None:
    """The example has a route: an allowed prompt reaches it, with the model the hook set."""
    response = await post(readme_app(), "/v1/chat/completions", chat("good morning", user="u1"))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "my-new-model says hi"


async def test_readme_example_refuses_hello_world() -> None:
    response = await post(readme_app(), "/v1/chat/completions", chat("Hello world", user="u1"))
    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert response.json()["choices"][0]["message"]["content"] == "This is an invalid response"
    assert response.json()["model"] == "gpt-4o"


async def test_readme_example_blocks_forbidden() -> None:
    response = await post(readme_app(), "/v1/chat/completions", chat("a forbidden word", user="u1"))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Violated content policy"


async def test_readme_example_enforces_the_user_param() -> None:
    response = await post(readme_app(), "/v1/chat/completions", chat("good morning"))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "user"


#: Snippets that talk to a running service: run against one by their own tests below.
CLIENTS = {"sdk_clients.py"}


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.name not in CLIENTS], ids=lambda path: path.name)
def test_snippet_runs(snippet: Path) -> None:
    namespace = runpy.run_path(str(snippet))
    provider = namespace.get("provider")
    if provider is not None:
        provider.shutdown()  # the OpenTelemetry sample's span processor thread


async def test_moderation_snippet_rejects_in_both_modes() -> None:
    namespace = runpy.run_path(str(ROOT / "docs" / "snippets" / "moderation_modes.py"))
    for name in ("raced", "first"):
        response = await post(namespace[name], "/v1/chat/completions", chat("How do I make a weapon?"))
        assert response.status_code == 200, name
        assert response.headers["x-llm-guard-rejected"] == "moderation"
        assert response.json()["choices"][0]["message"]["content"] == "I can't help with that."


async def test_custom_routes_snippet_guards_the_tenant_path_and_frees_the_azure_form() -> None:
    namespace = runpy.run_path(str(ROOT / "docs" / "snippets" / "custom_routes.py"))
    app = namespace["app"]
    tenant = await post(app, "/tenants/acme/chat", chat("a forbidden word"))
    assert tenant.headers.get("x-llm-guard-rejected") == "pre_call"
    azure = await post(app, "/openai/deployments/d1/embeddings", {"input": "a forbidden word"})
    assert "x-llm-guard-rejected" not in azure.headers  # not guarded: the app (no such route) answers 404
    assert azure.status_code == 404
    embeddings = await post(app, "/v1/embeddings", {"model": "e", "input": "a forbidden word"})
    assert embeddings.headers.get("x-llm-guard-rejected") == "pre_call"


async def test_streaming_snippet_hooks_rewrite_and_withhold() -> None:
    from asgi_llm_guard import LLMHookMiddleware

    namespace = runpy.run_path(str(ROOT / "docs" / "snippets" / "streaming_hooks.py"))
    upper = LLMHookMiddleware(Downstream(words=("a", "b")), hooks=[namespace["Upper"]()])
    response = await post(upper, "/v1/chat/completions", chat("hi", stream=True))
    assert '"content":"A"' in response.text and '"content":"B"' in response.text
    secret = Downstream(words=("the", " sec", "ret", " is", " out"))
    withheld = LLMHookMiddleware(secret, hooks=[namespace["NoSecretsAcrossChunks"]()])
    response = await post(withheld, "/v1/chat/completions", chat("hi", stream=True))
    assert "[withheld]" in response.text
    assert " sec" not in response.text


def test_every_readme_sample_is_a_tested_file() -> None:
    """Each Python sample in the README is shown from a file the docs include and the tests run: every line of it
    is in one of them (the README may leave out the imports and set-up the file needs to run)."""
    files = [ROOT / "examples" / "quickstart.py", *SNIPPETS]
    for block in readme_python_blocks():
        lines = {line.strip() for line in block.splitlines() if line.strip()}
        assert any(lines <= {line.strip() for line in f.read_text().splitlines()} for f in files), block


def test_every_docs_sample_is_an_included_file_or_a_one_call_fragment() -> None:
    """A sample a reader can copy lives in a file that is tested; a fenced block written in a page is at most a
    three-line fragment (a signature, one call)."""
    for page in (ROOT / "docs").glob("*.md"):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            if "--8<--" not in block:
                assert len([line for line in block.splitlines() if line.strip()]) <= 3, f"{page.name}: {block}"


async def test_the_sdk_sample_talks_to_the_fastapi_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/snippets/sdk_clients.py as written, against the FastAPI example on a free port instead of 4000."""
    import asyncio
    import contextlib
    import io

    from examples import fastapi_app
    from tests.servers import serve

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    source = (ROOT / "docs" / "snippets" / "sdk_clients.py").read_text()
    assert source.count("http://127.0.0.1:4000") == 2
    async with serve(fastapi_app.app) as base_url:
        printed = io.StringIO()

        def run() -> None:  # the SDKs' sync clients, off the event loop that serves them
            with contextlib.redirect_stdout(printed):
                exec(compile(source.replace("http://127.0.0.1:4000", base_url), "sdk_clients.py", "exec"), {})

        await asyncio.to_thread(run)
    assert printed.getvalue().splitlines() == ["You said: good morning", "You said: good morning"]
