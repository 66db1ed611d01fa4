// Small DOM helpers: element building, icons, dialogs with focus trap, toasts, time formats.

import { lang, locale, t } from "./i18n.js";

/** h("button", {class: "btn", onclick: fn}, "text", childNode, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (typeof value !== "string" && key in el) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace an element's children (null, false and undefined children are skipped). */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let counter = 0;
export function uid(prefix = "id") {
  counter += 1;
  return `${prefix}-${counter}`;
}

// -- icons (inline SVG, decorative: aria-hidden) --------------------------------------------

const PATHS = {
  plus: "M12 5v14M5 12h14",
  search: "M11 19a8 8 0 1 1 0-16 8 8 0 0 1 0 16zm10 2-4.3-4.3",
  send: "M22 2 11 13M22 2l-7 20-4-9-9-4 20-7z",
  edit: "M12 20h9M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4 12.5-12.5z",
  trash: "M3 6h18M8 6V4h8v2M19 6l-1 14H6L5 6M10 11v6M14 11v6",
  refresh: "M21 12a9 9 0 1 1-3-6.7L21 8M21 3v5h-5",
  check: "M20 6 9 17l-5-5",
  x: "M18 6 6 18M6 6l12 12",
  alert: "M12 9v4m0 4h.01M10.3 3.9 1.8 18a2 2 0 0 0 1.7 3h17a2 2 0 0 0 1.7-3L13.7 3.9a2 2 0 0 0-3.4 0z",
  logout: "M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4M16 17l5-5-5-5M21 12H9",
  globe: "M12 22a10 10 0 1 0 0-20 10 10 0 0 0 0 20zM2 12h20M12 2a15 15 0 0 1 0 20M12 2a15 15 0 0 0 0 20",
  channels: "M4 11a9 9 0 0 1 9 9M4 4a16 16 0 0 1 16 16M5 19h.01",
  history: "M3 3v5h5M3.1 13A9 9 0 1 0 6 5.3L3 8M12 7v5l4 2",
  rules: "M6 3v12M18 9a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM6 21a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM18 9a9 9 0 0 1-9 9",
  lock: "M5 11h14v10H5zM8 11V7a4 4 0 0 1 8 0v4",
  back: "M19 12H5M12 19l-7-7 7-7",
  chevron: "M9 18l6-6-6-6",
  eye: "M1 12s4-8 11-8 11 8 11 8-4 8-11 8S1 12 1 12zm11 3a3 3 0 1 0 0-6 3 3 0 0 0 0 6z",
  clock: "M12 22a10 10 0 1 0 0-20 10 10 0 0 0 0 20zM12 6v6l4 2",
  logo: "M22 2 11 13M22 2l-7 20-4-9-9-4 20-7z",
};

export function icon(name, cls = "icon") {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", cls);
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", PATHS[name] || PATHS.x);
  svg.append(path);
  return svg;
}

// -- dialogs --------------------------------------------------------------------------------

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), summary, [tabindex]:not([tabindex="-1"])';

export function focusables(root) {
  return [...root.querySelectorAll(FOCUSABLE)].filter(
    (el) => !el.closest("[hidden]") && el.getClientRects().length > 0,
  );
}

/**
 * A modal <dialog>: the page behind is inert, Tab stays inside, Esc closes, and focus returns
 * to what opened it. Returns {dialog, body, close}.
 */
export function openDialog({ title, content, actions = [], className = "", initialFocus, onClose, describedBy }) {
  const opener = document.activeElement;
  const titleId = uid("dlg-title");
  const body = h("div", { class: "dialog-body" }, content);
  const closeButton = h(
    "button",
    { type: "button", class: "icon-btn dialog-x", "aria-label": t("common.close") },
    icon("x"),
  );
  const dialog = h(
    "dialog",
    { class: `dialog ${className}`, "aria-labelledby": titleId, "aria-describedby": describedBy },
    h("header", { class: "dialog-head" }, h("h2", { id: titleId, tabindex: "-1" }, title), closeButton),
    body,
    actions.length ? h("footer", { class: "dialog-foot" }, actions) : null,
  );
  let closed = false;
  const close = (value) => {
    if (closed) return;
    closed = true;
    if (dialog.open) dialog.close();
    dialog.remove();
    if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
    if (onClose) onClose(value);
  };
  closeButton.addEventListener("click", () => close(false));
  dialog.addEventListener("cancel", (event) => {
    event.preventDefault();
    close(false);
  });
  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const items = focusables(dialog);
    if (!items.length) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) close(false); // a click on the backdrop
  });
  document.body.append(dialog);
  dialog.showModal();
  const target = typeof initialFocus === "function" ? initialFocus(dialog) : initialFocus;
  (target || dialog.querySelector("h2")).focus();
  return { dialog, body, close };
}

/** Ask before something that cannot be undone; resolves true when confirmed. */
export function confirmDialog({ title, message, confirmLabel, danger = true }) {
  return new Promise((resolve) => {
    const messageId = uid("dlg-msg");
    const cancel = h("button", { type: "button", class: "btn", text: t("common.cancel") });
    const confirm = h("button", {
      type: "button",
      class: danger ? "btn btn-danger" : "btn btn-primary",
      text: confirmLabel,
    });
    const { close } = openDialog({
      title,
      content: h("p", { id: messageId, text: message }),
      actions: [cancel, confirm],
      className: "dialog-confirm",
      describedBy: messageId,
      initialFocus: cancel,
      onClose: (value) => resolve(value === true),
    });
    cancel.addEventListener("click", () => close(false));
    confirm.addEventListener("click", () => close(true));
  });
}

// -- toasts ---------------------------------------------------------------------------------

/** The live region toasts are announced in; created before the first toast so it is heard. */
export function toastRegion() {
  let region = document.getElementById("toasts");
  if (!region) {
    region = h("div", { id: "toasts", class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(region);
  }
  return region;
}

export function toast(message, kind = "ok") {
  const region = toastRegion();
  const item = h("div", { class: `toast toast-${kind}` }, icon(kind === "ok" ? "check" : "alert"), h("span", { text: message }));
  region.append(item);
  setTimeout(() => item.classList.add("leaving"), 4200);
  setTimeout(() => item.remove(), 4600);
}

// -- formats --------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");

/** 2026-01-31 08:00:05 in the browser's time zone. */
export function formatTime(iso) {
  if (!iso) return t("common.none");
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "3 minutes ago" / "3 分钟前" (or "in 5 seconds"). */
export function relativeTime(iso) {
  if (!iso) return t("common.none");
  const d = new Date(iso);
  const seconds = Math.round((d.getTime() - Date.now()) / 1000);
  if (Math.abs(seconds) < 10) return t("time.justNow");
  const fmt = new Intl.RelativeTimeFormat(locale(), { numeric: "auto" });
  const units = [
    ["year", 31536000],
    ["month", 2592000],
    ["day", 86400],
    ["hour", 3600],
    ["minute", 60],
    ["second", 1],
  ];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === "second") return fmt.format(Math.round(seconds / size), unit);
  }
  return formatTime(iso);
}

/** An <time> element showing relative time with the exact time as its title. */
export function timeEl(iso, relative = true) {
  if (!iso) return h("span", { class: "muted", text: t("common.none") });
  return h("time", { datetime: iso, title: formatTime(iso), text: relative ? relativeTime(iso) : formatTime(iso) });
}

/** For <input type="datetime-local">: ISO (UTC) -> "YYYY-MM-DDTHH:mm" in local time, and back. */
export function isoToLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function localInputToIso(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

export function formatNumber(n) {
  return new Intl.NumberFormat(locale()).format(n);
}

export function isZh() {
  return lang() === "zh";
}

/** JSON text pretty-printed when it parses, else as it is. */
export function prettyBody(text) {
  if (typeof text !== "string") return text == null ? "" : JSON.stringify(text, null, 2);
  const trimmed = text.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    try {
      return JSON.stringify(JSON.parse(trimmed), null, 2);
    } catch {
      return text;
    }
  }
  return text;
}
