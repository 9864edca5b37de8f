// Runs Anthropic Messages calls with the npm @anthropic-ai/sdk and prints what the SDK made of each, as JSON.
//
//   node anthropic_cases.mjs http://127.0.0.1:PORT < cases.json > outcomes.json
//
// cases.json: [{"how": "create" | "create-stream" | "stream-helper", "params": {...messages.create params}}, ...]
// Each outcome is {"texts", "stop_reason", "model", "event_types"} for an answer, or {"error": {...}} holding the
// SDK's error class name, status, parsed body, type and the headers the tests look at. The cases run one after
// another, in one process (the SDK loads once).
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({ baseURL: process.argv[2], apiKey: 'sk-ant-test', maxRetries: 0, timeout: 30_000 });

function textsOfEvents(events) {
  const blocks = new Map();
  let stopReason = null;
  for (const event of events) {
    if (event.type === 'content_block_start' && event.content_block.type === 'text') {
      blocks.set(event.index, event.content_block.text);
    } else if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') {
      blocks.set(event.index, blocks.get(event.index) + event.delta.text);
    } else if (event.type === 'message_delta') {
      stopReason = event.delta.stop_reason;
    }
  }
  return { texts: [...blocks.keys()].sort((a, b) => a - b).map((i) => blocks.get(i)), stopReason };
}

async function run({ how, params }) {
  const eventTypes = [];
  try {
    if (how === 'create') {
      const message = await client.messages.create(params);
      const texts = message.content.filter((b) => b.type === 'text').map((b) => b.text);
      return { texts, stop_reason: message.stop_reason, model: message.model, event_types: [] };
    }
    if (how === 'create-stream') {
      const stream = await client.messages.create({ ...params, stream: true });
      const events = [];
      for await (const event of stream) {
        events.push(event);
        eventTypes.push(event.type);
      }
      const { texts, stopReason } = textsOfEvents(events);
      return { texts, stop_reason: stopReason, model: events[0]?.message?.model ?? null, event_types: eventTypes };
    }
    const stream = client.messages.stream(params);
    for await (const event of stream) {
      eventTypes.push(event.type);
    }
    const final = await stream.finalMessage();
    const texts = final.content.filter((b) => b.type === 'text').map((b) => b.text);
    return { texts, stop_reason: final.stop_reason, model: final.model, event_types: eventTypes };
  } catch (err) {
    return {
      error: {
        class: err.constructor.name,
        is_api_error: err instanceof Anthropic.APIError,
        status: err.status ?? null,
        body: err.error ?? null,
        type: err.type ?? null,
        message: String(err.message),
        retry_after: err.headers?.get?.('retry-after') ?? null,
        rejected: err.headers?.get?.('x-llm-guard-rejected') ?? null,
      },
      event_types: eventTypes,
    };
  }
}

let input = '';
for await (const chunk of process.stdin) input += chunk;
const outcomes = [];
for (const testCase of JSON.parse(input)) outcomes.push(await run(testCase));
process.stdout.write(JSON.stringify(outcomes));
