from fastapi import FastAPI, HTTPException, Request

from asgi_llm_guard import CallHook, LLMHookMiddleware, get_formatted_prompt


class MyHandler(CallHook):  # or any class with these methods: no base class needed
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        prompt = get_formatted_prompt(data=data, call_type=call_type)
        if "forbidden" in prompt:
            raise HTTPException(status_code=400, detail={"error": "Violated content policy"})
        if "Hello world" in prompt:
            return "This is an invalid response"  # a refusal, answered as a normal completion
        data["model"] = "my-new-model"  # rewrite what the app receives
        return data


app = FastAPI()
app.add_middleware(LLMHookMiddleware, hooks=[MyHandler()], enforce_user_param=True)


@app.post("/v1/chat/completions")
async def chat(request: Request) -> dict:
    data = await request.json()  # the body as the hooks left it
    reply = {"role": "assistant", "content": f"{data['model']} says hi"}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": data["model"],
            "choices": [{"index": 0, "message": reply, "finish_reason": "stop"}]}
