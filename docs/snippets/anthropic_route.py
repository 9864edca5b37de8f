from typing import Any

from fastapi import FastAPI

from asgi_llm_guard import CallHook, LLMHookMiddleware, get_formatted_prompt


class NoSecrets(CallHook):
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        # One hook for /v1/chat/completions and /v1/messages: get_formatted_prompt reads either format.
        if "s3cr3t" in get_formatted_prompt(data, call_type):
            return "I can't share that."  # an Anthropic message on /v1/messages, a chat completion on chat
        return None


app = FastAPI()
# enforce_user_param asks /v1/messages for metadata.user_id (Anthropic's field), chat for "user".
app.add_middleware(LLMHookMiddleware, hooks=[NoSecrets()], enforce_user_param=True)
