from fastapi import FastAPI

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, RejectRequest

app = FastAPI()


class NoSecrets(CustomGuardrail):
    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):
        texts = [t.replace("s3cr3t", "[REDACTED]") for t in inputs["texts"]]   # mask
        if any("rm -rf" in t for t in texts):
            raise RejectRequest("I can't help with that.")                       # or block with an HTTPException
        return {**inputs, "texts": texts}


guard = NoSecrets(guardrail_name="no-secrets", event_hook=["pre_call", "post_call"], default_on=True)
app.add_middleware(LLMHookMiddleware, hooks=[guard])
