// Pieces shared by the pages: channel types, badges, the Test Push result, request transcripts.

import { api } from "./api.js";
import { formatTime, h, icon, prettyBody, timeEl } from "./dom.js";
import { t, typeName } from "./i18n.js";

let typesPromise = null;

/** The server's channel types (GET /channel-types), fetched once per sign-in. */
export function loadTypes() {
  if (!typesPromise) {
    typesPromise = api.get("/channel-types").then(
      (answer) => answer.items || [],
      (error) => {
        typesPromise = null;
        throw error;
      },
    );
  }
  return typesPromise;
}

export function forgetTypes() {
  typesPromise = null;
}

const FAMILIES = {
  wecom: { glyph: "W", cls: "v-wecom" },
  feishu: { glyph: "F", cls: "v-feishu" },
  lark: { glyph: "L", cls: "v-feishu" },
  dingtalk: { glyph: "D", cls: "v-dingtalk" },
  webhook: { glyph: "</>", cls: "v-webhook" },
};

/** A coloured square naming the vendor (decorative: the name is always written next to it). */
export function typeBadge(typeId, size = "") {
  const family = FAMILIES[String(typeId).split("_")[0]] || {
    glyph: String(typeId).slice(0, 1).toUpperCase(),
    cls: "v-other",
  };
  return h("span", { class: `vendor ${family.cls} ${size}`, "aria-hidden": "true", text: family.glyph });
}

/** Vendor name and type id, e.g. "DingTalk Bot · dingtalk_bot". */
export function typeCell(typeId, apiName) {
  return h(
    "span",
    { class: "type-cell" },
    typeBadge(typeId),
    h("span", { class: "type-text" }, h("span", { class: "type-name", text: typeName(typeId, apiName) }), h("code", { class: "type-id", text: typeId })),
  );
}

export function limitsText(rate) {
  const parts = [];
  for (const key of ["per_second", "per_minute", "per_hour"]) {
    // no-break spaces: "20 条/分钟" never splits across lines
    if (rate && rate[key]) parts.push(t(`limits.${key}`, { n: rate[key] }).replace(/ /g, "\u00a0"));
  }
  return parts.join(" · ");
}

export function statusBadge(status) {
  const known = ["queued", "sending", "retrying", "delivered", "failed", "cancelled"].includes(status);
  return h("span", { class: `status s-${known ? status : "other"}` }, h("span", { class: "dot", "aria-hidden": "true" }), known ? t(`status.${status}`) : status);
}

export function pageHead({ title, intro, actions = [], back }) {
  return h(
    "div",
    { class: "page-head" },
    back ? h("a", { class: "back-link", href: back.href }, icon("back", "icon icon-sm"), h("span", { text: back.label })) : null,
    h(
      "div",
      { class: "page-head-row" },
      h("div", { class: "page-title" }, h("h1", { tabindex: "-1", text: title }), intro ? h("p", { class: "intro", text: intro }) : null),
      actions.length ? h("div", { class: "page-actions" }, actions) : null,
    ),
  );
}

export function errorPanel(error, onRetry) {
  const message = error && error.status === 404 ? t("err.notFound") : error && error.message ? error.message : String(error);
  return h(
    "div",
    { class: "panel error-panel", role: "alert" },
    icon("alert"),
    h("p", { text: message }),
    onRetry ? h("button", { type: "button", class: "btn", onclick: onRetry, text: t("common.retry") }) : null,
  );
}

export function loadingPanel() {
  return h("div", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), h("span", { text: t("common.loading") }));
}

/** A definition list of the facts that are present. */
export function facts(pairs, cls = "facts") {
  const items = pairs.filter(([, value]) => value !== null && value !== undefined && value !== "");
  if (!items.length) return null;
  return h(
    "dl",
    { class: cls },
    items.map(([label, value, valueCls]) =>
      h("div", { class: "fact" }, h("dt", { text: label }), h("dd", { class: valueCls || "" }, value instanceof Node ? value : String(value))),
    ),
  );
}

/** The requests an attempt made and what came back (secrets already removed by the server). */
export function transcript(exchanges, open = false) {
  if (!Array.isArray(exchanges) || !exchanges.length) return null;
  return h(
    "details",
    { class: "transcript", open },
    h("summary", {}, icon("chevron", "icon icon-sm chev"), h("span", { text: t("test.request") })),
    exchanges.map((x) => {
      const head = [`${x.method || "POST"} ${x.url || ""}`];
      for (const [name, value] of Object.entries(x.headers || {})) head.push(`${name}: ${value}`);
      const request = `${head.join("\n")}\n\n${prettyBody(x.body || "")}`;
      const answer =
        x.status !== undefined || x.response
          ? `HTTP ${x.status ?? "?"}\n\n${prettyBody(x.response || "")}`
          : null;
      return h(
        "div",
        { class: "exchange" },
        h("pre", { class: "code", tabindex: "0", "aria-label": `${x.method || "POST"} ${x.url || ""}` }, h("code", { text: request })),
        answer ? h("pre", { class: "code code-answer", tabindex: "0", "aria-label": `HTTP ${x.status ?? "?"}` }, h("code", { text: answer })) : null,
        x.error ? h("p", { class: "exchange-error" }, icon("alert", "icon icon-sm"), h("span", { text: x.error })) : null,
      );
    }),
  );
}

/** Test Push outcome: delivered or not, the vendor's code and message, the diagnosis. */
export function resultPanel(result, { at, compact = false } = {}) {
  const ok = Boolean(result && result.ok);
  return h(
    "section",
    { class: `result ${ok ? "result-ok" : "result-fail"}${compact ? " result-compact" : ""}`, "aria-label": t("test.result"), dataset: { ok: String(ok) } },
    h(
      "div",
      { class: "result-head" },
      h("span", { class: "result-icon", "aria-hidden": "true" }, icon(ok ? "check" : "x")),
      h("strong", { class: "result-title", text: ok ? t("test.ok") : t("test.fail") }),
      result.duration_ms !== undefined && result.duration_ms !== null ? h("span", { class: "muted", text: t("common.ms", { n: result.duration_ms }) }) : null,
      at ? h("span", { class: "muted" }, " · ", t("test.at", { when: "" }).trim(), " ", timeEl(at)) : null,
    ),
    result.diagnosis ? h("p", { class: "diagnosis", text: result.diagnosis }) : null,
    facts([
      [t("test.status"), result.status_code, "mono"],
      [t("test.vendorCode"), result.vendor_code, "mono"],
      [t("test.vendorMessage"), result.vendor_message],
    ]),
    compact ? null : transcript(result.request),
  );
}

export function exactTime(iso) {
  return formatTime(iso);
}
