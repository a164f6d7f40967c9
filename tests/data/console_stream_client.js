// Run by tests/test_console.py in the browser (execute_async_script) on the console page:
// the console's own api.js over scripted fetch responses. Reports what it saw.
const done = arguments[arguments.length - 1];
(async () => {
  const api = await import(new URL("console/api.js", location.href).href);
  const enc = new TextEncoder();
  // Pulled chunk by chunk: an error raised up front would drop the chunks still queued.
  const body = (chunks, fail) => {
    const left = [...chunks];
    return new ReadableStream({
      pull(c) {
        if (left.length) c.enqueue(enc.encode(left.shift()));
        else if (fail) c.error(new TypeError("connection reset"));
        else c.close();
      },
    });
  };
  const sse = (chunks, fail) =>
    new Response(body(chunks, fail), { headers: { "Content-Type": "text/event-stream" } });
  const json = (value, status = 200) =>
    new Response(JSON.stringify(value), { status, headers: { "Content-Type": "application/json" } });

  // 1. The parser: a heartbeat, an event split mid-JSON and between \r and \n,
  // multi-line data, no space after the colon, an event cut off before its blank line.
  const parsed = [];
  for await (const e of api.readEvents(body([
    ": heartbeat\n\n", 'id: 1\nevent: progress\ndata: {"step": 1,', ' "steps": 2}\r',
    "\n\r\n", "id: 2\nevent: token\ndata: a\ndata: b\n\n", "event: token\ndata:c\n\n",
    "id: 9\nevent: cut\ndata: never ends",
  ]))) parsed.push(e);

  // 2. watch(): job_a's stream breaks after two events, the resumed one finishes;
  // job_b has no event stream (404) and is polled.
  const asked = [];
  let polls = 0;
  const states = [{ id: "job_b", status: "queued", queue_position: 0 },
    { id: "job_b", status: "running", metrics: { progress: 0.5 } },
    { id: "job_b", status: "succeeded" }];
  window.fetch = async (url, init) => {
    const path = new URL(url).pathname;
    if (path.endsWith("/job_a/events")) {
      asked.push(init.headers["Last-Event-ID"] ?? null);
      if (asked.length === 1) {
        return sse(['id: 1-0\nevent: queued\ndata: {"queue_position": 3}\n\n',
          "id: 2-0\nevent: started\ndata: {}\n\n"], true);
      }
      return sse(['id: 3-0\nevent: token\ndata: {"text": "hi"}\n\n',
        'id: 4-0\nevent: completed\ndata: {"id": "job_a", "status": "succeeded"}\n\n']);
    }
    if (path.endsWith("/job_b/events")) return json({ error: { code: "not_found" } }, 404);
    if (path.endsWith("/job_b")) return json(states[Math.min(polls++, 2)]);
    return json({}, 500);
  };
  const run = (id) => new Promise((resolve) => {
    const seen = [];
    const modes = [];
    api.watch({
      events: `v1/jobs/${id}/events`,
      poll: `v1/jobs/${id}`,
      done: (j) => api.TERMINAL_JOB.has(j.status),
      onEvent: (name, data) => seen.push([name, data]),
      onSnapshot: (j) => seen.push(["snapshot", j.status]),
      onMode: (m) => {
        modes.push(m);
        if (m === "done" || m === "error") resolve({ seen, modes });
      },
    });
  });
  const streamed = await run("job_a");
  const polled = await run("job_b");
  done({ parsed, asked, streamed, polled });
})().catch((e) => done({ error: String((e && e.stack) || e) }));
