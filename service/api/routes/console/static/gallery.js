// Recent jobs, newest first, as cards with thumbnails; filters by status and model live
// in the URL (#/gallery?status=succeeded&model=…) so a filtered view can be shared.
import { api } from "./api.js";
import { badge, clip, errorBox, h, replace, shortId, time } from "./ui.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];
const PAGE = 24;

function picture(job) {
  const first = job.output?.images?.[0];
  if (first?.url) return h("img", { src: first.url, alt: "", loading: "lazy", class: "thumb" });
  if (job.input?.image?.url) {
    return h("img", { src: job.input.image.url, alt: "", loading: "lazy", class: "thumb" });
  }
  return h("div", { class: `thumb placeholder ${job.status}` }, job.task);
}

function card(job) {
  const text = job.task === "generate" ? job.input?.prompt
    : job.input?.question ?? job.input?.messages?.at(-1)?.content;
  const count = job.output?.images?.length;
  return h("a", { class: "card", href: `#/jobs/${job.id}`, dataset: { jobId: job.id } },
    picture(job),
    h("div", { class: "card-body" },
      h("div", { class: "card-head" }, badge(job.status),
        count > 1 ? h("span", { class: "muted" }, `${count} images`) : null),
      h("p", { class: "card-text" }, clip(text, 90)),
      job.output?.text ? h("p", { class: "card-answer" }, clip(job.output.text, 90)) : null,
      h("p", { class: "muted small" }, `${job.model} · ${shortId(job.id)}`),
      h("p", { class: "muted small" }, time(job.created_at))));
}

export async function renderGallery(main, { query, go }) {
  const models = await api("v1/models");
  const status = h("select", { id: "filter-status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s }, s)));
  const model = h("select", { id: "filter-model" },
    h("option", { value: "" }, "any model"),
    models.data.map((m) => h("option", { value: m.id }, m.id)));
  status.value = query.get("status") || "";
  model.value = query.get("model") || "";
  const refresh = h("button", { type: "button", id: "refresh" }, "Refresh");
  const grid = h("div", { class: "grid", id: "gallery" });
  const more = h("button", { type: "button", id: "more", hidden: true }, "Load more");
  const message = h("div", {});

  function filtersChanged() {
    const params = new URLSearchParams();
    if (status.value) params.set("status", status.value);
    if (model.value) params.set("model", model.value);
    const q = params.toString();
    go(`#/gallery${q ? `?${q}` : ""}`);
  }
  status.addEventListener("change", filtersChanged);
  model.addEventListener("change", filtersChanged);

  let cursor = null;
  async function load(reset) {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (status.value) params.set("status", status.value);
    if (model.value) params.set("model", model.value);
    if (!reset && cursor) params.set("after", cursor);
    try {
      const page = await api(`v1/jobs?${params}`);
      if (reset) grid.replaceChildren();
      grid.append(...page.data.map(card));
      cursor = page.next;
      more.hidden = !page.has_more;
      replace(message, grid.children.length ? null
        : h("p", { class: "muted", id: "gallery-empty" }, "No jobs match."));
    } catch (error) {
      replace(message, errorBox(error));
    }
  }
  refresh.addEventListener("click", () => load(true));
  more.addEventListener("click", () => load(false));

  replace(main, h("h1", {}, "Gallery"),
    h("div", { class: "toolbar" }, status, model, refresh), message, grid, more);
  await load(true);
}
