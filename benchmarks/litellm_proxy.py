"""The optional comparison with the LiteLLM proxy (``--litellm``): the same trivial pre-call hook, the same
bare app behind it, the same load.

LiteLLM is installed on request into its own venv, ``benchmarks/.litellm-venv`` (gitignored), with ``pip
install 'litellm[proxy]'``; it is never a dependency of the package or of its tests. The proxy gets a config
with one ``openai/`` model whose ``api_base`` is the bare app, and a callback whose ``async_pre_call_hook``
returns ``data`` unchanged, then is loaded like our guarded app: interleaved rounds, guarded app vs proxy,
both answering the same chat request. If the install or the start fails, that is printed and the run goes on
without it.

Differences in the setup, stated so the figure is read right: the proxy is a second HTTP hop (client → proxy →
bare app), which is what deploying it means; the guard is in the app's process. Both share the 2 cores with
wrk."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import median, table
from benchmarks.load import HOST, Load, LoadGenerator, Server, check_answer, free_port, interleave

VENV = Path(__file__).resolve().parent / ".litellm-venv"
INSTALL_TIMEOUT = 900.0
PROXY_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the model price list at import
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # no .env loading
    "DISABLE_ADMIN_UI": "True",
}

CALLBACKS = """\
from litellm.integrations.custom_logger import CustomLogger


class TrivialPreCall(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        return data


proxy_handler_instance = TrivialPreCall()
"""


def _bin(name: str) -> Path:
    return VENV / "bin" / name


def ensure_installed() -> tuple[bool, str]:
    """(ok, what happened). Installs ``litellm[proxy]`` into :data:`VENV` unless it is already there."""
    if _bin("litellm").exists():
        done = subprocess.run(
            [str(_bin("python")), "-c", "import litellm.proxy.proxy_server"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **PROXY_ENV},
            check=False,
        )
        if done.returncode == 0:
            return True, f"already installed in {VENV}"
    started = time.monotonic()
    try:
        if not _bin("python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120
            )
        done = subprocess.run(
            [
                str(_bin("python")),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "litellm[proxy]",
            ],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return False, f"could not install litellm[proxy]: {type(exc).__name__}: {exc}"
    if done.returncode != 0 or not _bin("litellm").exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        return False, f"pip install 'litellm[proxy]' failed ({done.returncode}):\n{tail}"
    return True, f"installed litellm {_version()} in {time.monotonic() - started:.0f}s"


def _version() -> str:
    done = subprocess.run(
        [str(_bin("python")), "-m", "pip", "show", "litellm"], capture_output=True, text=True, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("Version:")), "Version: ?")
    return line.split(":", 1)[1].strip()


def start_proxy(bare: Server, work: Path, master_key: str) -> Server:
    config_dir = work / "litellm"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "custom_callbacks.py").write_text(CALLBACKS)
    (config_dir / "config.yaml").write_text(
        textwrap.dedent(f"""\
        model_list:
          - model_name: gpt-4o-mini
            litellm_params:
              model: openai/gpt-4o-mini
              api_base: {bare.url}/v1
              api_key: sk-bench-upstream
        litellm_settings:
          callbacks: custom_callbacks.proxy_handler_instance
          telemetry: false
          drop_params: true
        general_settings:
          master_key: {master_key}
        """)
    )
    port = free_port()
    argv = [
        str(_bin("litellm")),
        "--config",
        str(config_dir / "config.yaml"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--num_workers",
        "1",
        "--telemetry",
        "False",
    ]
    return Server(
        "litellm",
        argv,
        port,
        work,
        ready_path="/health/liveliness",
        env=PROXY_ENV,
        cwd=config_dir,
        ready_timeout=240.0,
    )


def compare(
    generator: LoadGenerator,
    bare: Server,
    guard: Server,
    load: Load,
    rounds: int,
    seconds: float,
    work: Path,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    guard_load = load
    print("  litellm: installing / checking benchmarks/.litellm-venv ...", file=sys.stderr, flush=True)
    ok, note = ensure_installed()
    print(f"  litellm: {note}", file=sys.stderr, flush=True)
    if not ok:
        return {"ok": False, "note": note}
    # The proxy refuses to start without a master key; requests then present it, as real clients would.
    master_key = "sk-" + secrets.token_hex(32)
    load = dataclasses.replace(load, auth=f"Bearer {master_key}")
    try:
        proxy = start_proxy(bare, work, master_key)
    except (RuntimeError, OSError) as exc:
        return {"ok": False, "note": f"the LiteLLM proxy did not start: {exc}"}
    stack.callback(proxy.stop)
    try:
        check_answer(proxy.url, load, "json")
        hook_seen = httpx.post(proxy.url + load.path, content=load.body, headers=load.headers(), timeout=30)
        hook_seen.raise_for_status()
    except (RuntimeError, httpx.HTTPError) as exc:
        return {
            "ok": False,
            "note": f"the LiteLLM proxy does not answer the chat request: {exc}",
            "log": proxy.log_tail(),
        }
    print(f"  litellm: {rounds} rounds x {seconds:.0f}s each side ...", file=sys.stderr, flush=True)
    per_round = interleave(
        generator,
        ("litellm", proxy.url),
        ("guard", guard.url),
        load,
        rounds,
        seconds,
        2.0,
        right_load=guard_load,
    )
    return {
        "ok": True,
        "note": note,
        "version": _version(),
        "rounds": per_round,
        "median_ratio": median([r["ratio"] for r in per_round]),  # guard rps / litellm rps
        "litellm_rps": median([r["litellm"]["rps"] for r in per_round]),
        "guard_rps": median([r["guard"]["rps"] for r in per_round]),
        "litellm_p50_ms": median([r["litellm"]["p50_ms"] for r in per_round]),
        "guard_p50_ms": median([r["guard"]["p50_ms"] for r in per_round]),
        "litellm_p99_ms": median([r["litellm"]["p99_ms"] for r in per_round]),
        "guard_p99_ms": median([r["guard"]["p99_ms"] for r in per_round]),
        "errors": sum(r["litellm"]["errors"] + r["guard"]["errors"] for r in per_round),
    }


def report(result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"LiteLLM proxy comparison: not measured. {result.get('note')}"
    rows = [
        [
            r["round"],
            r["litellm"]["rps"],
            r["guard"]["rps"],
            r["ratio"],
            r["litellm"]["p50_ms"],
            r["guard"]["p50_ms"],
            r["litellm"]["p99_ms"],
            r["guard"]["p99_ms"],
            r["litellm"]["errors"] + r["guard"]["errors"],
        ]
        for r in result["rounds"]
    ]
    rows.append(
        [
            "median",
            result["litellm_rps"],
            result["guard_rps"],
            result["median_ratio"],
            result["litellm_p50_ms"],
            result["guard_p50_ms"],
            result["litellm_p99_ms"],
            result["guard_p99_ms"],
            result["errors"],
        ]
    )
    return table(
        [
            "round",
            "litellm rps",
            "guard rps",
            "guard/litellm",
            "litellm p50 ms",
            "guard p50",
            "litellm p99 ms",
            "guard p99",
            "errors",
        ],
        rows,
        title=(
            f"Chat JSON, one trivial pre-call hook: LiteLLM proxy {result['version']} (1 worker, in front of "
            f"the bare app) vs LLMHookMiddleware (in the app)"
        ),
    )
