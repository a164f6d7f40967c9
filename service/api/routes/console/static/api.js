// The console's one way to reach the API: the key from sessionStorage as the Bearer
// header, the JSON error shape turned into an ApiError, and live views that read the
// event stream with fetch (EventSource cannot send headers) or poll when there is none.

const KEY = "janus.apiKey";

// The page is served at <prefix>/console, so the API lives at <prefix>/: a console
// behind a path-prefixing proxy still finds it.
export const base = new URL(".", location.href);

export const getKey = () => sessionStorage.getItem(KEY) || "";
export const setKey = (key) => sessionStorage.setItem(KEY, key.trim());
export const clearKey = () => sessionStorage.removeItem(KEY);

export const TERMINAL_JOB = new Set(["succeeded", "failed", "canceled"]);
export const TERMINAL_BATCH = new Set(["completed", "canceled"]);

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.details = error.details || [];
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${getKey()}`, ...extra };
}

async function failure(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not our JSON shape (a proxy's page): the status says enough
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("janus:unauthorized"));
  return new ApiError(response.status, error);
}

// `path` is relative to the API root ("v1/jobs"). `json` or `form` is the body.
// Answers parsed JSON, or the Response itself for other content types.
export async function api(path, { method = "GET", json, form, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal, cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // the browser writes the multipart boundary itself
  }
  const response = await fetch(new URL(path, base), init);
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("Content-Type") || "";
  return type.startsWith("application/json") ? response.json() : response;
}

// Server-sent events from a fetch body: yields {id, event, data} per dispatched event.
// Comment lines (heartbeats) are skipped; `data` lines are joined with newlines.
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let match;
      while ((match = /\r\n|\r|\n/.exec(buffer))) {
        // A lone \r at the end may be the first half of \r\n: wait for the next chunk.
        if (match[0] === "\r" && match.index === buffer.length - 1) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (event.data.length) yield { ...event, data: event.data.join("\n") };
          event = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.event = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id" && !text.includes("\0")) event.id = text;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// Watch something live. `events` is the stream's path, `poll` the object's path.
// onEvent(name, data) gets every stream event; onSnapshot(object) every polled object;
// onMode("stream" | "polling" | "done" | "error", detail). The stream is resumed with
// Last-Event-ID when it breaks; after `resumes` tries in a row without a new event,
// or when the stream answers 404 (no events endpoint yet), the watch polls `poll`
// every second until done(object) holds. Returns a function that stops it.
export function watch({ events, poll, onEvent, onSnapshot, onMode, done, resumes = 2 }) {
  const abort = new AbortController();
  let stopped = false;

  async function stream() {
    let lastId = null;
    let misses = 0;
    while (!stopped && misses <= resumes) {
      let response;
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        response = await fetch(new URL(events, base), {
          headers, signal: abort.signal, cache: "no-store",
        });
      } catch {
        if (stopped) return true;
        misses += 1;
        await sleep(500);
        continue;
      }
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        if (response.status === 401) window.dispatchEvent(new CustomEvent("janus:unauthorized"));
        response.body?.cancel().catch(() => {});
        return false; // 404 (not served here) or anything else: polling decides
      }
      onMode("stream");
      try {
        for await (const message of readEvents(response.body)) {
          if (message.id !== null) lastId = message.id;
          misses = 0;
          let data = message.data;
          try {
            data = JSON.parse(data);
          } catch {
            // keep the raw text
          }
          onEvent(message.event, data);
          if (message.event === "completed") return true;
        }
      } catch {
        if (stopped) return true;
      }
      misses += 1; // ended or broke before `completed`: resume where it stopped
      await sleep(300);
    }
    return stopped;
  }

  async function polling() {
    onMode("polling");
    while (!stopped) {
      try {
        const object = await api(poll, { signal: abort.signal });
        if (stopped) return;
        onSnapshot(object);
        if (done(object)) {
          onMode("done");
          return;
        }
      } catch (error) {
        if (stopped) return;
        if (error instanceof ApiError && error.status < 500) {
          onMode("error", error);
          return;
        }
        // an outage or a dropped connection: keep polling
      }
      await sleep(1000);
    }
  }

  (async () => {
    if (await stream()) {
      if (!stopped) onMode("done");
      return;
    }
    await polling();
  })();

  return () => {
    stopped = true;
    abort.abort();
  };
}
