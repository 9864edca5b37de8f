from fastapi import FastAPI

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.contrib import PromptPatternGuard

app = FastAPI()
app.add_middleware(
    LLMHookMiddleware,
    hooks=[PromptPatternGuard(deny=[r"\bforbidden\b"])],
    routes={
        "/tenants/{tenant}/chat": "completion",  # guard another path as chat
        "/openai/deployments/{deployment}/embeddings": None,  # stop guarding the Azure embeddings form
    },
)
