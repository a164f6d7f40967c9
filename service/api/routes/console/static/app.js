// The console's shell: the key (typed once, kept in this tab's sessionStorage), the
// hash router, and one page at a time (each page may return a function that stops
// whatever it keeps running, such as a live view).
import { ApiError, api, clearKey, getKey, setKey } from "./api.js";
import { renderBatch, renderBatches } from "./batches.js";
import { renderGallery } from "./gallery.js";
import { renderJob } from "./job.js";
import { renderSubmit } from "./submit.js";
import { errorBox, h, replace } from "./ui.js";

const main = document.getElementById("main");
const keybar = document.getElementById("keybar");
let stop = null;
let keyMessage = null;

const ROUTES = [
  [/^#?\/?$/, "submit", renderSubmit],
  [/^#\/gallery$/, "gallery", renderGallery],
  [/^#\/jobs\/([^/]+)$/, "gallery", renderJob],
  [/^#\/batches$/, "batches", renderBatches],
  [/^#\/batches\/([^/]+)$/, "batches", renderBatch],
];

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function drawKeybar() {
  const key = getKey();
  replace(keybar, key
    ? [h("span", { class: "muted", id: "key-shown" }, `key …${key.slice(-4)}`), " ",
      h("button", { type: "button", id: "forget-key", onclick: () => {
        clearKey();
        route();
      } }, "Forget key")]
    : null);
}

function keyForm() {
  const input = h("input", { id: "key-input", type: "password", autocomplete: "off",
    placeholder: "paste an API key", required: true, size: 48 });
  const status = h("div", {}, keyMessage ? errorBox({ message: keyMessage }) : null);
  const form = h("form", { id: "key-form", class: "panel narrow" },
    h("h1", {}, "API key"),
    h("p", { class: "muted" }, "Paste a key made with ", h("code", {}, "janus-service keys create"),
      ". It stays in this tab only (sessionStorage) and is sent as the Bearer header."),
    h("div", { class: "row" }, input, h("button", { type: "submit", id: "key-save" }, "Use key")),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(input.value);
    try {
      await api("v1/models"); // a wrong key answers 401 here, before any page
      keyMessage = null;
      route();
    } catch (error) {
      clearKey();
      replace(status, errorBox(error instanceof ApiError && error.status === 401
        ? { message: "This key was refused (unknown or revoked)." } : error));
    }
  });
  replace(main, form);
  input.focus();
}

async function route() {
  if (stop) stop();
  stop = null;
  drawKeybar();
  const hash = location.hash || "#/";
  const [path, search = ""] = hash.split("?");
  for (const link of document.querySelectorAll("#nav a")) link.classList.remove("active");
  if (!getKey()) {
    keyForm();
    return;
  }
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "New job")));
    return;
  }
  const [pattern, nav, render] = found;
  document.querySelector(`#nav a[data-route="${nav}"]`)?.classList.add("active");
  const id = pattern.exec(path)[1];
  const at = location.hash;
  // Each page draws into its own element: one still loading when the user moves on
  // draws into a detached element, never over the next page.
  const view = h("div", { class: "view" });
  replace(main, view);
  try {
    const stopper = await render(view, { id: id && decodeURIComponent(id),
      query: new URLSearchParams(search), go });
    // The user may have moved on while the page loaded: stop what it started.
    if (location.hash !== at && stopper) stopper();
    else stop = stopper || null;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // the key form shows
    replace(view, h("h1", {}, "Something went wrong"), errorBox(error));
  }
}

window.addEventListener("janus:unauthorized", () => {
  clearKey();
  keyMessage = "The API refused this key; paste it again or use another.";
  route();
});
window.addEventListener("hashchange", route);
route();
