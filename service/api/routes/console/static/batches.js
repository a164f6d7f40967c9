// Batches: upload a JSONL or CSV file, see the counts move, cancel, download the results.
import { TERMINAL_BATCH, api, watch } from "./api.js";
import { badge, errorBox, facts, h, progressBar, replace, shortId, time } from "./ui.js";

const COUNTS = ["queued", "running", "succeeded", "failed", "canceled"];

function countsView(batch) {
  const c = batch.counts;
  const finished = c.succeeded + c.failed + c.canceled;
  return [
    progressBar(c.total ? finished / c.total : 0, `${finished} of ${c.total} finished`),
    h("ul", { class: "counts", id: "batch-counts" },
      h("li", { dataset: { count: "total" } }, h("b", {}, c.total), " total"),
      COUNTS.map((name) => h("li", { class: name, dataset: { count: name } },
        h("b", {}, c[name]), ` ${name}`))),
  ];
}

function row(batch) {
  const c = batch.counts;
  return h("tr", { dataset: { batchId: batch.id } },
    h("td", {}, h("a", { href: `#/batches/${batch.id}` }, shortId(batch.id))),
    h("td", {}, badge(batch.status)),
    h("td", {}, `${c.succeeded + c.failed + c.canceled} / ${c.total}`),
    h("td", {}, batch.input_format), h("td", {}, time(batch.created_at)));
}

export async function renderBatches(main, { go }) {
  const models = await api("v1/models");
  const file = h("input", { type: "file", id: "batch-file", name: "file", required: true,
    accept: ".jsonl,.ndjson,.csv,application/x-ndjson,text/csv" });
  const model = h("select", { id: "batch-model", name: "model" },
    h("option", { value: "" }, "as each line says"),
    models.data.map((m) => h("option", { value: m.id }, m.id)));
  const status = h("div", {});
  const upload = h("button", { type: "submit", id: "batch-upload" }, "Upload");
  const form = h("form", { class: "panel", id: "batch-form" },
    h("p", { class: "muted" }, "JSONL: one job body per line (", h("code", {}, "custom_id"),
      " optional). CSV: a header row with ", h("code", {}, "prompt"), ", ",
      h("code", {}, "custom_id"), ", ", h("code", {}, "model"), ", … columns."),
    h("div", { class: "row" },
      h("label", { class: "field" }, h("span", {}, "File"), file),
      h("label", { class: "field" }, h("span", {}, "Default model"), model)),
    h("div", { class: "actions" }, upload), status);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    upload.disabled = true;
    replace(status, "Uploading…");
    const parts = new FormData();
    parts.append("file", file.files[0]);
    if (model.value) parts.append("defaults", JSON.stringify({ model: model.value }));
    try {
      const batch = await api("v1/batches", { method: "POST", form: parts });
      go(`#/batches/${batch.id}`);
    } catch (error) {
      replace(status, errorBox(error));
      upload.disabled = false;
    }
  });

  const table = h("table", { class: "batches", id: "batch-list" });
  replace(main, h("h1", {}, "Batches"), form, h("h2", {}, "Recent batches"), table);
  const list = await api("v1/batches?limit=20");
  replace(table, h("tr", {}, ["batch", "status", "finished", "format", "created"].map((t) =>
    h("th", {}, t))), list.data.map(row));
  if (!list.data.length) table.after(h("p", { class: "muted" }, "No batches yet."));
}

async function download(batch, box) {
  try {
    const response = await api(`v1/batches/${batch.id}/results`);
    const blob = await response.blob();
    const a = h("a", { href: URL.createObjectURL(blob), download: `${batch.id}.jsonl` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (error) {
    replace(box, errorBox(error));
  }
}

async function results(batch, box) {
  const response = await api(`v1/batches/${batch.id}/results`);
  const lines = (await response.text()).split("\n").filter(Boolean).map((l) => JSON.parse(l));
  replace(box, h("table", { class: "results", id: "batch-results" },
    h("tr", {}, ["custom id", "job", "status", "output"].map((t) => h("th", {}, t))),
    lines.map((line) => h("tr", { dataset: { jobId: line.job_id } },
      h("td", {}, line.custom_id ?? "—"),
      h("td", {}, h("a", { href: `#/jobs/${line.job_id}` }, shortId(line.job_id))),
      h("td", {}, badge(line.status)),
      h("td", {}, line.output?.images
        ? line.output.images.filter((i) => i.url).map((i) =>
          h("img", { src: i.url, alt: "", class: "mini", loading: "lazy" }))
        : line.output?.text ?? line.error?.message ?? "")))));
}

export async function renderBatch(main, { id }) {
  let batch = await api(`v1/batches/${encodeURIComponent(id)}`);
  const status = h("span", { id: "batch-status" });
  const counts = h("div", { class: "panel" });
  const mode = h("span", { class: "muted mode" });
  const cancel = h("button", { type: "button", id: "cancel-batch", class: "danger" }, "Cancel");
  const get = h("button", { type: "button", id: "download-results" }, "Download results");
  const problems = h("div", {});
  const table = h("div", { class: "panel" });

  function draw() {
    replace(status, badge(batch.status));
    replace(counts, h("h2", {}, "Progress ", mode), countsView(batch),
      facts([["format", batch.input_format], ["created", time(batch.created_at)],
        ["started", time(batch.started_at)], ["completed", time(batch.completed_at)],
        ["webhook", batch.webhook]]));
    const done = TERMINAL_BATCH.has(batch.status);
    cancel.hidden = done || batch.status === "canceling";
    if (done) results(batch, table).catch((error) => replace(table, errorBox(error)));
  }
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      batch = await api(`v1/batches/${batch.id}/cancel`, { method: "POST" });
      draw();
    } catch (error) {
      replace(problems, errorBox(error));
    } finally {
      cancel.disabled = false;
    }
  });
  get.addEventListener("click", () => download(batch, problems));

  replace(main, h("h1", {}, "Batch ", h("code", {}, batch.id), " ", status),
    h("div", { class: "toolbar" }, cancel, get), problems, counts,
    h("h2", {}, "Results"), table);
  replace(table, h("p", { class: "muted" }, "Listed when the batch has finished; ",
    "the download has whatever has finished so far."));
  draw();
  if (TERMINAL_BATCH.has(batch.status)) return null;

  return watch({
    events: `v1/batches/${batch.id}/events`,
    poll: `v1/batches/${batch.id}`,
    done: (b) => TERMINAL_BATCH.has(b.status),
    onMode(name, error) {
      replace(mode, { stream: "(streaming)", polling: "(polling every second)" }[name] ?? "");
      if (name === "error") replace(problems, errorBox(error));
    },
    onEvent(name, data) {
      if (name === "counts") {
        batch = { ...batch, counts: data.counts ?? data, status: data.status ?? batch.status };
        draw();
      } else if (name === "completed") {
        batch = data.counts ? data : batch;
        if (!data.counts) {
          api(`v1/batches/${batch.id}`)
            .then((b) => { batch = b; draw(); })
            .catch((error) => replace(problems, errorBox(error)));
        } else {
          draw();
        }
      }
    },
    onSnapshot(snapshot) {
      batch = snapshot;
      draw();
    },
  });
}
