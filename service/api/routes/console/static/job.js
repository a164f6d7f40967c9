// One job: live while it runs (queue position, progress, preview, streamed text), then
// its input, output, error, timings and webhook deliveries. Cancel while not finished.
import { TERMINAL_JOB, api, watch } from "./api.js";
import { badge, errorBox, facts, h, progressBar, replace, seconds, time } from "./ui.js";

function outputView(job) {
  const out = job.output;
  if (!out) return null;
  if (out.images) {
    return h("div", { class: "images", id: "output-images" }, out.images.map((img, i) =>
      img.url
        ? h("a", { href: img.url, target: "_blank", rel: "noopener" },
          h("img", { src: img.url, alt: `image ${i + 1}`, width: img.width,
            height: img.height, class: "output" }))
        : h("div", { class: "removed" }, `image ${i + 1}: data removed`)));
  }
  return h("pre", { class: "answer", id: "output-text" }, out.text ?? "");
}

function inputView(job) {
  const input = { ...job.input };
  const image = input.image;
  delete input.image;
  // A conversation shows as its turns, one "role: content" line each.
  const turns = input.messages?.map((m) => `${m.role}: ${m.content}`).join("\n");
  const text = input.prompt ?? input.question ?? turns;
  delete input.prompt;
  delete input.question;
  delete input.messages;
  return [
    text ? h("blockquote", { class: "prompt" }, text) : null,
    image?.url ? h("img", { src: image.url, alt: "input image", class: "input-image" }) : null,
    image ? h("p", { class: "muted" },
      `${image.content_type}, ${image.width}×${image.height}, ${image.bytes} bytes`) : null,
    facts(Object.entries(input).map(([k, v]) => [k, JSON.stringify(v)])),
  ];
}

function timings(job) {
  return facts([
    ["created", time(job.created_at)],
    ["started", time(job.started_at)],
    ["completed", time(job.completed_at)],
    ["queued for", seconds(job.metrics?.queue_seconds)],
    ["ran for", seconds(job.metrics?.run_seconds)],
    ["attempts", String(job.attempts)],
    ["deadline", job.deadline_at ? time(job.deadline_at) : null],
    ["batch", job.batch_id ? h("a", { href: `#/batches/${job.batch_id}` }, job.batch_id) : null],
    ["custom id", job.custom_id],
    ["webhook", job.webhook],
    ["data removed", job.data_removed ? time(job.data_removed_at) : null],
  ]);
}

async function deliveries(job, box) {
  if (!job.webhook) {
    replace(box, h("p", { class: "muted" }, "No webhook."));
    return;
  }
  try {
    const list = await api(`v1/jobs/${job.id}/webhook-deliveries`);
    if (!list.data.length) {
      replace(box, h("p", { class: "muted" }, "No delivery tried yet."));
      return;
    }
    replace(box, h("table", { class: "deliveries" },
      h("tr", {}, ["when", "event", "try", "answer", "ms", "event status"].map((t) =>
        h("th", {}, t))),
      list.data.map((d) => h("tr", {},
        h("td", {}, time(d.attempted_at)), h("td", {}, d.type), h("td", {}, d.attempt),
        h("td", {}, d.status_code ?? d.error ?? "—"), h("td", {}, d.duration_ms ?? "—"),
        h("td", {}, d.event_status)))));
  } catch (error) {
    replace(box, errorBox(error));
  }
}

export async function renderJob(main, { id }) {
  let job = await api(`v1/jobs/${encodeURIComponent(id)}`);
  const status = h("span", { id: "job-status" });
  const cancel = h("button", { id: "cancel-job", type: "button", class: "danger" }, "Cancel");
  const mode = h("span", { class: "muted mode", id: "live-mode" });
  const bar = h("div", { id: "progress" });
  const note = h("p", { class: "muted", id: "live-note" });
  const preview = h("img", { id: "preview", alt: "preview", class: "preview", hidden: true });
  const streamed = h("pre", { id: "streamed", class: "answer", hidden: true });
  const live = h("section", { class: "panel live" }, h("h2", {}, "Live ", mode), note, bar,
    preview, streamed);
  const output = h("section", { class: "panel" });
  const hooks = h("div", {});
  const details = h("div", { class: "columns" });

  function draw() {
    replace(status, badge(job.status));
    cancel.hidden = TERMINAL_JOB.has(job.status);
    live.hidden = TERMINAL_JOB.has(job.status);
    replace(output, h("h2", {}, "Output"),
      job.error ? errorBox(job.error) : null,
      outputView(job) ?? h("p", { class: "muted" },
        TERMINAL_JOB.has(job.status) ? "No output." : "Not finished yet."));
    replace(details,
      h("section", { class: "panel" }, h("h2", {}, "Input"), inputView(job)),
      h("section", { class: "panel" }, h("h2", {}, "Timings"), timings(job),
        job.metadata && Object.keys(job.metadata).length
          ? [h("h3", {}, "Metadata"), h("pre", {}, JSON.stringify(job.metadata, null, 2))]
          : null,
        h("h3", {}, "Webhook deliveries"), hooks));
    if (TERMINAL_JOB.has(job.status)) deliveries(job, hooks);
    else replace(hooks, h("p", { class: "muted" }, "Shown when the job has finished."));
  }

  function progress(fraction, label) {
    replace(bar, progressBar(fraction, label));
  }
  function queued(position) {
    replace(note, position === undefined || position === null
      ? "Queued." : `Queued: ${position} job${position === 1 ? "" : "s"} ahead.`);
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      job = await api(`v1/jobs/${job.id}/cancel`, { method: "POST" });
      draw();
    } catch (error) {
      output.prepend(errorBox(error));
    } finally {
      cancel.disabled = false;
    }
  });

  replace(main, h("h1", {}, "Job ", h("code", {}, job.id), " ", status, " ", cancel),
    h("p", { class: "muted" }, `${job.task} on ${job.model}`), live, output, details);
  draw();
  if (job.status === "queued") queued(job.queue_position);
  progress(job.metrics?.progress ?? 0, "");
  if (TERMINAL_JOB.has(job.status)) return null;

  return watch({
    events: `v1/jobs/${job.id}/events`,
    poll: `v1/jobs/${job.id}`,
    done: (j) => TERMINAL_JOB.has(j.status),
    onMode(name, error) {
      replace(mode, { stream: "(streaming)", polling: "(polling every second)" }[name] ?? "");
      if (name === "error") live.append(errorBox(error));
    },
    onEvent(name, data) {
      if (name === "queued") queued(data.queue_position);
      else if (name === "started") {
        replace(note, "Running.");
        replace(status, badge("running"));
      } else if (name === "progress") {
        replace(note, "Running.");
        progress(data.fraction, `step ${data.step} of ${data.steps}`);
      } else if (name === "token") {
        streamed.hidden = false;
        streamed.append(data.text ?? "");
      } else if (name === "preview") {
        preview.hidden = false;
        preview.src = data.url ?? `data:image/jpeg;base64,${data.b64_json}`;
      } else if (name === "completed") {
        job = data;
        draw();
      }
    },
    onSnapshot(snapshot) {
      job = snapshot;
      if (job.status === "queued") queued(job.queue_position);
      else if (job.status === "running") {
        replace(note, "Running.");
        const p = job.metrics?.progress ?? 0;
        progress(p, `${Math.round(p * 100)}%`);
      }
      replace(status, badge(job.status));
      if (TERMINAL_JOB.has(job.status)) draw();
    },
  });
}
