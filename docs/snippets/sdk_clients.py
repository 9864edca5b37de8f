import anthropic
import openai

answer = openai.OpenAI(base_url="http://127.0.0.1:4000/v1", api_key="unused").responses.create(
    model="gpt-4o-mini", user="ishaan-app", input="good morning"
)
print(answer.output_text)  # the built-in model echoes the prompt back

message = anthropic.Anthropic(base_url="http://127.0.0.1:4000", api_key="unused").messages.create(
    model="claude-sonnet-4-5",
    max_tokens=256,
    metadata={"user_id": "ishaan-app"},
    messages=[{"role": "user", "content": "good morning"}],
)
print(message.content[0].text)
