// A run's event stream read with fetch (EventSource cannot send the API key as a header),
// resumed with Last-Event-ID after a dropped connection, until the server ends it.
import { authHeader } from "./app.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function follow(path, onEvent, { onEnd } = {}) {
  const stop = new AbortController();
  let lastId = null;
  let ended = false;  // a terminal status came: the server closed the stream for good

  async function once() {
    const headers = { Authorization: authHeader(), Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const answer = await fetch(path, { headers, signal: stop.signal });
    if (!answer.ok) throw new Error(`the event stream answered ${answer.status}`);
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      text += value;
      const blocks = text.split("\n\n");
      text = blocks.pop();
      const events = [];
      for (const block of blocks) {
        const fields = {};
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const at = line.indexOf(":");
          fields[line.slice(0, at)] = line.slice(at + 1).replace(/^ /, "");
        }
        if (fields.data === undefined) continue;
        if (fields.id) lastId = fields.id;
        const event = { event: fields.event || "message", data: JSON.parse(fields.data) };
        if (event.event === "status" && TERMINAL.has(event.data.status)) ended = true;
        events.push(event);
      }
      if (events.length) onEvent(events);
    }
  }

  (async () => {
    for (;;) {
      try {
        await once();
        if (ended) break;
      } catch (error) {
        if (stop.signal.aborted) return;
      }
      if (stop.signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, 2000));  // the server's `retry`
    }
    if (onEnd) onEnd();
  })();
  return () => stop.abort();
}
