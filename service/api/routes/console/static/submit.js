// New job: generate (prompt → images) or understand (image + question → text).
import { ApiError, api, base } from "./api.js";
import { errorBox, h, replace } from "./ui.js";

let previewSupport = null;

// Whether this API takes `"preview": true` on generate jobs: asked of its own OpenAPI
// document, so the box appears only where the server accepts the field.
function supportsPreview() {
  previewSupport ??= fetch(new URL("openapi.json", base))
    .then((r) => r.json())
    .then((doc) => Boolean(doc.components?.schemas?.GenerateInput?.properties?.preview))
    .catch(() => false);
  return previewSupport;
}

const number = (form, name) => {
  const raw = form.elements[name]?.value.trim();
  return raw ? Number(raw) : undefined;
};

function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", {}, label), control,
    hint ? h("small", {}, hint) : null);
}

function generateFields(model, preview) {
  const d = model?.defaults?.generate || {};
  const flow = model?.family === "janusflow";
  return [
    field("Prompt", h("textarea", { id: "prompt", name: "prompt", rows: 3, required: true,
      maxlength: 4000, placeholder: "a red fox in snow" })),
    h("div", { class: "row" },
      field("Images", h("input", { id: "num_images", name: "num_images", type: "number",
        min: 1, max: 16, value: 1 })),
      field("Seed", h("input", { name: "seed", type: "number", min: 0, placeholder: "random" })),
      field("Guidance", h("input", { name: "guidance", type: "number", min: 0, max: 30,
        step: "any", placeholder: d.guidance ?? "" })),
      flow
        ? field("Steps", h("input", { name: "steps", type: "number", min: 1, max: 100,
          placeholder: d.steps ?? "" }))
        : field("Temperature", h("input", { name: "temperature", type: "number", min: 0,
          max: 2, step: "any", placeholder: d.temperature ?? "" }))),
    preview
      ? h("label", { class: "check" }, h("input", { type: "checkbox", name: "preview",
        id: "preview" }), " Show previews while it draws (costs some time)")
      : null,
  ];
}

function understandFields(model) {
  const d = model?.defaults?.understand || {};
  const shown = h("img", { class: "upload-preview", alt: "" });
  const file = h("input", { id: "image", name: "image", type: "file", required: true,
    accept: "image/png,image/jpeg,image/webp" });
  file.addEventListener("change", () => {
    if (shown.src) URL.revokeObjectURL(shown.src);
    shown.src = file.files[0] ? URL.createObjectURL(file.files[0]) : "";
  });
  return [
    h("div", { class: "row" }, field("Image", file, "PNG, JPEG or WebP"), shown),
    field("Question", h("textarea", { id: "question", name: "question", rows: 2,
      required: true, maxlength: 4000, placeholder: "What is in the picture?" })),
    h("div", { class: "row" },
      field("Max new tokens", h("input", { name: "max_new_tokens", type: "number", min: 1,
        max: 2048, placeholder: d.max_new_tokens ?? "" })),
      field("Temperature", h("input", { name: "temperature", type: "number", min: 0, max: 2,
        step: "any", placeholder: d.temperature ?? "" })),
      field("Top p", h("input", { name: "top_p", type: "number", min: 0, max: 1, step: "any",
        placeholder: d.top_p ?? "" })),
      field("Seed", h("input", { name: "seed", type: "number", min: 0, placeholder: "random" }))),
  ];
}

function body(form, task) {
  const input = {};
  const names = task === "generate"
    ? ["num_images", "seed", "guidance", "temperature", "steps"]
    : ["max_new_tokens", "temperature", "top_p", "seed"];
  for (const name of names) {
    const value = number(form, name);
    if (value !== undefined) input[name] = value;
  }
  if (task === "generate") {
    input.prompt = form.elements.prompt.value;
    if (form.elements.preview?.checked) input.preview = true;
  } else {
    input.question = form.elements.question.value;
  }
  return { model: form.elements.model.value, task, input };
}

export async function renderSubmit(main, { go }) {
  replace(main, h("h1", {}, "New job"), h("p", { class: "muted" }, "Loading models…"));
  const [models, preview] = await Promise.all([api("v1/models"), supportsPreview()]);
  const all = models.data;
  if (!all.length) {
    replace(main, h("h1", {}, "New job"), h("p", {}, "This deployment serves no models."));
    return;
  }
  const task = h("select", { id: "task", name: "task" },
    h("option", { value: "generate" }, "Generate images"),
    h("option", { value: "understand" }, "Understand an image"));
  const model = h("select", { id: "model", name: "model" });
  const specific = h("div", { class: "specific" });
  const status = h("div", { class: "status" });
  const submit = h("button", { id: "submit-job", type: "submit" }, "Submit");
  const form = h("form", { id: "submit-form", class: "panel" },
    h("div", { class: "row" }, field("Task", task), field("Model", model)),
    specific, h("div", { class: "actions" }, submit), status);

  const current = () => all.find((m) => m.id === model.value);
  function fillModels() {
    const keep = model.value;
    const usable = all.filter((m) => m.tasks.includes(task.value));
    replace(model, usable.map((m) => h("option", { value: m.id },
      `${m.id} (${m.family}; ${m.workers} worker${m.workers === 1 ? "" : "s"}, ` +
      `${m.queued} queued)`)));
    if (usable.some((m) => m.id === keep)) model.value = keep;
  }
  function fillFields() {
    replace(specific, task.value === "generate"
      ? generateFields(current(), preview) : understandFields(current()));
  }
  task.addEventListener("change", () => { fillModels(); fillFields(); });
  model.addEventListener("change", fillFields);
  fillModels();
  fillFields();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    replace(status, "Submitting…");
    try {
      const job = body(form, task.value);
      let created;
      if (job.task === "understand") {
        // multipart: the file travels as itself, not as base64 inside JSON
        const parts = new FormData();
        parts.append("image", form.elements.image.files[0]);
        parts.append("job", JSON.stringify(job));
        created = await api("v1/jobs", { method: "POST", form: parts });
      } else {
        created = await api("v1/jobs", { method: "POST", json: job });
      }
      go(`#/jobs/${created.id}`);
    } catch (error) {
      replace(status, errorBox(error instanceof ApiError ? error : { message: String(error) }));
      submit.disabled = false;
    }
  });
  replace(main, h("h1", {}, "New job"), form);
}
