from asgi_llm_guard import RejectRequest


class Upper:  # per chunk: rewrite each delta
    async def async_post_call_streaming_hook(self, user_api_key_dict, response):
        for choice in response.get("choices", []):
            if choice.get("delta", {}).get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()


class NoSecretsAcrossChunks:  # over the stream: a window sees words split across chunks
    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict, response, request_data):
        window = []
        async for chunk in response:
            window.append(chunk)
            if len(window) == 4:
                text = "".join(c["choices"][0]["delta"].get("content") or "" for c in window if c["choices"])
                if "secret" in text:
                    raise RejectRequest("[withheld]")
                for item in window:
                    yield item
                window = []
        for item in window:
            yield item
