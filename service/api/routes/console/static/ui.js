// DOM helpers. Text from the API only ever becomes text nodes or attributes, never
// HTML, so a prompt or an error message cannot inject markup.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export const time = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

export const seconds = (value) =>
  value === null || value === undefined ? "—" : `${Number(value).toFixed(2)} s`;

export const shortId = (id) => (id && id.length > 14 ? `${id.slice(0, 10)}…${id.slice(-4)}` : id);

export const badge = (status) => h("span", { class: `badge ${status}` }, status);

export function clip(text, length = 80) {
  if (!text) return "";
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

// A definition list from [label, value] pairs, skipping empty values.
export function facts(pairs) {
  const dl = h("dl", { class: "facts" });
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(h("dt", {}, label), h("dd", {}, value));
  }
  return dl;
}

// One line per error, naming the field (and batch line) when the API names one.
export function errorBox(error) {
  const items = (error.details || []).map((d) =>
    h("li", {}, [d.line ? `line ${d.line}: ` : "", d.field ? `${d.field}: ` : "", d.message]),
  );
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, error.code ? `${error.code}: ` : ""),
    error.message || String(error),
    items.length ? h("ul", {}, items) : null,
  );
}

export function progressBar(fraction, label = "") {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  const fill = h("div", { class: "fill" });
  fill.style.width = `${pct.toFixed(1)}%`; // CSSOM, not a style attribute: the CSP allows it
  return h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": Math.round(pct) },
    fill,
    h("span", { class: "label" }, label),
  );
}

export function thumb(url, alt, href) {
  const img = h("img", { src: url, alt, loading: "lazy", class: "thumb" });
  return href ? h("a", { href }, img) : img;
}
