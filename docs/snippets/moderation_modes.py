from fastapi import FastAPI

from asgi_llm_guard import LLMHookMiddleware, RejectRequest, get_formatted_prompt

BLOCKED = ("make a weapon",)


async def flags(text: str) -> bool:  # stands in for your classifier or moderation service
    return any(phrase in text.lower() for phrase in BLOCKED)


class Moderation:
    async def async_moderation_hook(self, data, user_api_key_dict, call_type):
        if await flags(get_formatted_prompt(data=data, call_type=call_type)):
            raise RejectRequest("I can't help with that.")


raced = FastAPI()
raced.add_middleware(LLMHookMiddleware, hooks=[Moderation()])  # moderation="parallel"

first = FastAPI()
first.add_middleware(LLMHookMiddleware, hooks=[Moderation()], moderation="before")  # never bill a blocked prompt
