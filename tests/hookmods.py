"""Hooks importable by string, as a LiteLLM config names them (``custom_callbacks.proxy_handler_instance``)."""

from __future__ import annotations

from typing import Any


class Handler:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        data["via_import_string"] = True
        return data


proxy_handler_instance = Handler()
not_a_hook = object()
