// Forms built from a channel type's JSON Schema (GET /api/v1/channel-types), so a new channel
// type needs no console code. Field kinds: string (uri, password / x-secret, textarea), number
// and integer (min/max), boolean, enum, array of strings or integers, array of enum values,
// object of string -> string, anyOf [X, null]; anything else falls back to a JSON editor.

import { h, icon, uid } from "./dom.js";
import { lang, t } from "./i18n.js";

export const OMIT = Symbol("omit");

// -- schema reading -------------------------------------------------------------------------

function deref(schema, root) {
  let current = schema || {};
  for (let i = 0; i < 8 && current && current.$ref; i += 1) {
    const path = current.$ref.replace(/^#\//, "").split("/");
    let target = root;
    for (const part of path) target = target ? target[part] : undefined;
    const { $ref, ...rest } = current;
    current = { ...(target || {}), ...rest };
  }
  if (current && Array.isArray(current.allOf) && current.allOf.length === 1) {
    const { allOf, ...rest } = current;
    current = { ...deref(allOf[0], root), ...rest };
  }
  return current || {};
}

/** One property's schema unwrapped: anyOf [X, null] -> X (nullable), $ref resolved. */
export function resolveProperty(prop, root) {
  const outer = deref(prop, root);
  let inner = outer;
  let nullable = false;
  const variants = outer.anyOf || outer.oneOf;
  if (Array.isArray(variants)) {
    const nonNull = variants.map((v) => deref(v, root)).filter((v) => v.type !== "null");
    nullable = nonNull.length < variants.length;
    const { anyOf, oneOf, ...rest } = outer;
    inner = nonNull.length === 1 ? { ...nonNull[0], ...rest } : { ...rest, anyOf: nonNull };
  }
  if (Array.isArray(inner.type)) {
    nullable = nullable || inner.type.includes("null");
    const types = inner.type.filter((x) => x !== "null");
    inner = { ...inner, type: types.length === 1 ? types[0] : types };
  }
  const secret = Boolean(outer["x-secret"] || inner["x-secret"]);
  return { schema: inner, nullable, secret };
}

function kindOf(schema, secret) {
  if (Array.isArray(schema.enum) && schema.enum.length) return "enum";
  switch (schema.type) {
    case "string":
      if (schema.format === "textarea") return "textarea";
      if (secret || schema.format === "password" || schema.writeOnly) return "secret";
      if (schema.format === "uri" || schema.format === "url") return "url";
      return "text";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "array": {
      const items = schema.items || {};
      if (Array.isArray(items.enum) && items.enum.length) return "multienum";
      if (["string", "integer", "number"].includes(items.type)) return "tags";
      return "json";
    }
    case "object": {
      const extra = schema.additionalProperties;
      const props = schema.properties && Object.keys(schema.properties).length;
      if (!props && (extra === true || (extra && (extra.type === "string" || !extra.type)))) return "map";
      return "json";
    }
    default:
      return "json";
  }
}

/** A schema's title or description in the console's language: x-title-zh / x-description-zh in
 * Chinese, falling back to the English text the schema always has. */
export function localized(schema, key) {
  if (lang() === "zh" && schema[`x-${key}-zh`]) return schema[`x-${key}-zh`];
  return schema[key];
}

/** The fields of a type's settings, in the schema's order. */
export function fieldSpecs(schema, prefix = "config") {
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, prop]) => {
    const { schema: s, nullable, secret } = resolveProperty(prop, schema);
    const items = s.items ? deref(s.items, schema) : undefined;
    const kind = kindOf({ ...s, items }, secret);
    return {
      name,
      path: `${prefix}.${name}`,
      title: localized(s, "title") || name,
      description: localized(s, "description") || "",
      required: required.has(name),
      kind,
      secret: secret || kind === "secret",
      nullable,
      default: s.default,
      schema: s,
      items,
      numeric: kind === "tags" && items && (items.type === "integer" || items.type === "number"),
      integer: (kind === "number" && s.type === "integer") || (kind === "tags" && items && items.type === "integer"),
    };
  });
}

// -- the field shell: label, control, help, error -------------------------------------------

/**
 * Wrap a control with its label, help text and an error slot, all wired with ids for screen
 * readers. `group` makes a fieldset/legend (for controls made of several inputs).
 */
export function fieldShell({ path, label, required = false, help, hint, control, inputId, group = false, inline = false }) {
  const helpId = uid("help");
  const errorId = uid("err");
  const labelChildren = [
    h("span", { class: "label-text", text: label }),
    required ? h("span", { class: "req", "aria-hidden": "true", text: "*" }) : null,
    required ? h("span", { class: "sr-only", text: ` (${t("common.required")})` }) : null,
  ];
  const labelEl = group
    ? h("legend", { class: "label" }, labelChildren)
    : h("label", { class: "label", for: inputId }, labelChildren);
  const helpEl =
    help || hint
      ? h(
          "div",
          { class: "help", id: helpId },
          hint ? h("p", { class: "hint" }, icon("lock", "icon icon-sm"), h("span", { text: hint })) : null,
          help ? h("p", { text: help }) : null,
        )
      : null;
  const errorEl = h("p", { class: "field-error", id: errorId, hidden: true });
  const wrap = h(
    group ? "fieldset" : "div",
    { class: `field${inline ? " field-inline" : ""}`, dataset: { field: path } },
    inline ? null : labelEl,
    inline ? h("div", { class: "inline-row" }, control, labelEl) : control,
    helpEl,
    errorEl,
  );
  const describedBy = [helpEl ? helpId : null, errorId].filter(Boolean).join(" ");
  for (const el of wrap.querySelectorAll("input, select, textarea")) {
    if (!el.getAttribute("aria-describedby")) el.setAttribute("aria-describedby", describedBy);
    if (required && !group) el.setAttribute("aria-required", "true");
  }
  const inputs = () => [...wrap.querySelectorAll("input, select, textarea")];
  return {
    wrap,
    path,
    setError(messages) {
      const list = (messages || []).filter(Boolean);
      errorEl.textContent = "";
      if (list.length) {
        errorEl.append(icon("alert", "icon icon-sm"), h("span", { text: list.join(" ") }));
      }
      errorEl.hidden = !list.length;
      wrap.classList.toggle("invalid", Boolean(list.length));
      for (const el of inputs()) {
        if (list.length) el.setAttribute("aria-invalid", "true");
        else el.removeAttribute("aria-invalid");
      }
    },
    focus() {
      const first = inputs()[0] || wrap.querySelector("button");
      if (first) first.focus();
    },
  };
}

// -- widgets --------------------------------------------------------------------------------

function emptyValue(spec, mode) {
  if (spec.secret) return OMIT; // create: not set; edit: keep the stored value
  if (spec.default !== undefined && spec.default !== null) return spec.default;
  if (spec.nullable) return mode === "edit" ? null : OMIT;
  return OMIT;
}

function formatDefault(value) {
  if (value === undefined || value === null || value === "") return "";
  if (Array.isArray(value) && !value.length) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function storedHint(masked) {
  if (typeof masked === "string" && masked.startsWith("http")) return t("form.stored", { masked });
  return t("form.storedPlain");
}

function secretToggle(input, title) {
  const button = h("button", {
    type: "button",
    class: "btn btn-ghost btn-sm reveal",
    "aria-pressed": "false",
    "aria-label": t("form.showSecretLabel", { field: title }),
    text: t("form.showSecret"),
  });
  button.addEventListener("click", () => {
    const shown = input.type === "text";
    input.type = shown ? "password" : "text";
    button.setAttribute("aria-pressed", String(!shown));
    button.textContent = shown ? t("form.showSecret") : t("form.hideSecret");
  });
  return button;
}

function textWidget(spec, ctx) {
  const id = uid("f");
  const stored = ctx.mode === "edit" && spec.secret && ctx.values[spec.name] !== undefined;
  const initial = spec.secret ? "" : (ctx.values[spec.name] ?? (ctx.mode === "create" ? spec.default : "") ?? "");
  let control;
  let input;
  if (spec.kind === "textarea") {
    input = h("textarea", { id, name: spec.path, class: "input mono", rows: 6, spellcheck: "false" });
    input.value = initial === null ? "" : String(initial);
    control = input;
  } else {
    input = h("input", {
      id,
      name: spec.path,
      class: "input",
      type: spec.secret ? "password" : spec.kind === "url" ? "url" : "text",
      autocomplete: spec.secret ? "new-password" : "off",
      spellcheck: "false",
      inputmode: spec.kind === "url" ? "url" : undefined,
      maxlength: spec.schema.maxLength,
      placeholder: stored
        ? t("form.storedPlaceholder")
        : spec.kind === "url"
          ? "https://"
          : formatDefault(spec.default) || undefined,
    });
    input.value = initial === null ? "" : String(initial);
    control = spec.secret ? h("div", { class: "input-group" }, input, secretToggle(input, spec.title)) : input;
  }
  const shell = fieldShell({
    path: spec.path,
    label: spec.title,
    required: spec.required && !stored,
    help: spec.description,
    hint: stored ? storedHint(ctx.values[spec.name]) : null,
    control,
    inputId: id,
  });
  return {
    ...shell,
    get() {
      const raw = input.value;
      const value = spec.kind === "textarea" ? raw : raw.trim();
      if (!value.trim()) return emptyValue(spec, ctx.mode);
      return value;
    },
  };
}

function numberWidget(spec, ctx) {
  const id = uid("f");
  const s = spec.schema;
  const input = h("input", {
    id,
    name: spec.path,
    class: "input input-number",
    type: "number",
    step: spec.integer ? "1" : "any",
    min: s.minimum ?? s.exclusiveMinimum,
    max: s.maximum ?? s.exclusiveMaximum,
    placeholder: formatDefault(spec.default) || undefined,
  });
  const initial = ctx.values[spec.name] ?? (ctx.mode === "create" ? spec.default : undefined);
  if (initial !== undefined && initial !== null) input.value = String(initial);
  const shell = fieldShell({ path: spec.path, label: spec.title, required: spec.required, help: spec.description, control: input, inputId: id });
  return {
    ...shell,
    get(errors) {
      if (input.validity.badInput) {
        errors.push({ field: spec.path, message: t("form.notNumber", { value: "…" }) });
        return OMIT;
      }
      const raw = input.value.trim();
      if (!raw) return emptyValue(spec, ctx.mode);
      const value = Number(raw);
      if (!Number.isFinite(value)) {
        errors.push({ field: spec.path, message: t("form.notNumber", { value: raw }) });
        return OMIT;
      }
      if (spec.integer && !Number.isInteger(value)) {
        errors.push({ field: spec.path, message: t("form.notInteger", { value: raw }) });
        return OMIT;
      }
      return value;
    },
  };
}

function booleanWidget(spec, ctx) {
  const id = uid("f");
  const initial = ctx.values[spec.name] ?? spec.default ?? false;
  const input = h("input", { id, name: spec.path, type: "checkbox", class: "switch", role: "switch", checked: Boolean(initial) });
  const shell = fieldShell({ path: spec.path, label: spec.title, help: spec.description, control: input, inputId: id, inline: true });
  return { ...shell, get: () => input.checked };
}

function enumWidget(spec, ctx) {
  const id = uid("f");
  const values = spec.schema.enum;
  const blank = !spec.required && (spec.nullable || spec.default === undefined);
  const select = h(
    "select",
    { id, name: spec.path, class: "input select" },
    blank ? h("option", { value: "", text: t("form.choose") }) : null,
    values.map((v, i) => h("option", { value: String(i), text: String(v) })),
  );
  const initial = ctx.values[spec.name] ?? (ctx.mode === "create" ? spec.default : undefined);
  const index = values.findIndex((v) => v === initial);
  select.value = index >= 0 ? String(index) : blank ? "" : "0";
  const shell = fieldShell({ path: spec.path, label: spec.title, required: spec.required, help: spec.description, control: select, inputId: id });
  return {
    ...shell,
    get() {
      if (select.value === "") return spec.nullable ? (ctx.mode === "edit" ? null : OMIT) : OMIT;
      return values[Number(select.value)];
    },
  };
}

function multiEnumWidget(spec, ctx) {
  const chosen = new Set(ctx.values[spec.name] ?? spec.default ?? []);
  const boxes = spec.items.enum.map((value) => {
    const id = uid("f");
    const box = h("input", { id, type: "checkbox", name: spec.path, value: String(value), checked: chosen.has(value) });
    return { value, box, el: h("div", { class: "check" }, box, h("label", { for: id, text: String(value) })) };
  });
  const control = h("div", { class: "checks" }, boxes.map((b) => b.el));
  const shell = fieldShell({ path: spec.path, label: spec.title, required: spec.required, help: spec.description, control, group: true });
  return { ...shell, get: () => boxes.filter((b) => b.box.checked).map((b) => b.value) };
}

/** A tag input: chips with remove buttons and a text input (Enter or comma adds). */
function tagsWidget(spec, ctx) {
  const id = uid("f");
  let tags = [...(ctx.values[spec.name] ?? (ctx.mode === "create" ? spec.default : null) ?? [])].map(String);
  const list = h("ul", { class: "chips", "aria-label": spec.title });
  const input = h("input", {
    id,
    name: spec.path,
    class: "chip-input",
    type: "text",
    autocomplete: "off",
    spellcheck: "false",
    inputmode: spec.numeric ? "numeric" : undefined,
    placeholder: t("form.tagsPlaceholder"),
  });
  const box = h("div", { class: "tags input" }, list, input);
  box.addEventListener("click", (event) => {
    if (event.target === box || event.target === list) input.focus();
  });
  const draw = () => {
    list.textContent = "";
    tags.forEach((tag, index) => {
      const remove = h(
        "button",
        { type: "button", class: "chip-x", "aria-label": t("form.remove", { value: tag }) },
        icon("x", "icon icon-xs"),
      );
      remove.addEventListener("click", () => {
        tags.splice(index, 1);
        draw();
        input.focus();
      });
      list.append(h("li", { class: "chip" }, h("span", { text: tag }), remove));
    });
    list.hidden = !tags.length;
  };
  const addFrom = (text) => {
    const parts = text.split(/[\n,，]/).map((p) => p.trim()).filter(Boolean);
    for (const part of parts) if (!tags.includes(part)) tags.push(part);
    draw();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === "," || event.key === "，") {
      event.preventDefault();
      if (input.value.trim()) {
        addFrom(input.value);
        input.value = "";
      }
    } else if (event.key === "Backspace" && !input.value && tags.length) {
      tags = tags.slice(0, -1);
      draw();
    }
  });
  input.addEventListener("paste", (event) => {
    const text = event.clipboardData ? event.clipboardData.getData("text") : "";
    if (/[\n,，]/.test(text)) {
      event.preventDefault();
      addFrom(input.value + text);
      input.value = "";
    }
  });
  input.addEventListener("blur", () => {
    if (input.value.trim()) {
      addFrom(input.value);
      input.value = "";
    }
  });
  draw();
  const help = [spec.description, t("form.tagsHelp")].filter(Boolean).join(" ");
  const shell = fieldShell({ path: spec.path, label: spec.title, required: spec.required, help, control: box, inputId: id });
  return {
    ...shell,
    get(errors) {
      const all = [...tags];
      if (input.value.trim()) all.push(...input.value.split(/[\n,，]/).map((p) => p.trim()).filter(Boolean));
      if (!spec.numeric) return all;
      const numbers = [];
      for (const value of all) {
        const n = Number(value);
        if (!Number.isFinite(n) || (spec.integer && !Number.isInteger(n))) {
          errors.push({ field: spec.path, message: t(spec.integer ? "form.notInteger" : "form.notNumber", { value }) });
          return OMIT;
        }
        numbers.push(n);
      }
      return numbers;
    },
  };
}

/** Key/value rows for an object of string -> string (e.g. headers). */
function mapWidget(spec, ctx) {
  const storedValue = ctx.values[spec.name];
  const storedKeys = ctx.mode === "edit" && spec.secret && storedValue ? Object.keys(storedValue) : [];
  const rowsEl = h("div", { class: "kv-rows" });
  const rows = [];
  const addRow = (key = "", value = "", focus = false) => {
    const row = { key: h("input", { class: "input", type: "text", autocomplete: "off", spellcheck: "false", placeholder: t("form.key") }) };
    row.value = h("input", {
      class: "input",
      type: spec.secret ? "password" : "text",
      autocomplete: spec.secret ? "new-password" : "off",
      spellcheck: "false",
      placeholder: storedKeys.includes(key) && key ? t("form.storedPlaceholder") : t("form.value"),
    });
    row.key.value = key;
    row.value.value = value;
    row.remove = h("button", { type: "button", class: "icon-btn" }, icon("trash"));
    row.el = h("div", { class: "kv-row" }, row.key, row.value, row.remove);
    row.remove.addEventListener("click", () => {
      const index = rows.indexOf(row);
      rows.splice(index, 1);
      row.el.remove();
      relabel();
      const next = rows[index] || rows[index - 1];
      if (next) next.key.focus();
      else addButton.focus();
    });
    rows.push(row);
    rowsEl.append(row.el);
    relabel();
    if (focus) row.key.focus();
  };
  const relabel = () => {
    rows.forEach((row, i) => {
      row.key.setAttribute("aria-label", `${spec.title}: ${t("form.rowKey", { n: i + 1 })}`);
      row.value.setAttribute("aria-label", `${spec.title}: ${t("form.rowValue", { n: i + 1 })}`);
      row.remove.setAttribute("aria-label", `${spec.title}: ${t("form.removeRow", { n: i + 1 })}`);
    });
  };
  const addButton = h(
    "button",
    { type: "button", class: "btn btn-sm", "aria-label": `${spec.title}: ${t("form.addRow")}` },
    icon("plus"),
    h("span", { text: t("form.addRow") }),
  );
  addButton.addEventListener("click", () => addRow("", "", true));
  if (storedKeys.length) storedKeys.forEach((key) => addRow(key, ""));
  else if (storedValue && typeof storedValue === "object") Object.entries(storedValue).forEach(([k, v]) => addRow(k, String(v)));
  else if (ctx.mode === "create" && spec.default && typeof spec.default === "object") {
    Object.entries(spec.default).forEach(([k, v]) => addRow(k, String(v)));
  }
  const control = h("div", { class: "kv" }, rowsEl, addButton);
  const shell = fieldShell({
    path: spec.path,
    label: spec.title,
    required: spec.required,
    help: spec.description,
    hint: storedKeys.length ? t("form.storedPlain") : null,
    control,
    group: true,
  });
  return {
    ...shell,
    get(errors) {
      const entries = rows.map((r) => [r.key.value.trim(), r.value.value]).filter(([k, v]) => k || v);
      if (storedKeys.length) {
        const keys = entries.map(([k]) => k);
        const untouched =
          keys.length === storedKeys.length && storedKeys.every((k) => keys.includes(k)) && entries.every(([, v]) => !v);
        if (untouched) return OMIT; // keep the stored values
        if (entries.length && entries.some(([, v]) => !v)) {
          errors.push({ field: spec.path, message: t("form.mapRefill") });
          return OMIT;
        }
      }
      return Object.fromEntries(entries);
    },
  };
}

function jsonWidget(spec, ctx) {
  const id = uid("f");
  const input = h("textarea", { id, name: spec.path, class: "input mono", rows: 4, spellcheck: "false" });
  const initial = spec.secret ? undefined : ctx.values[spec.name] ?? (ctx.mode === "create" ? spec.default : undefined);
  if (initial !== undefined && initial !== null) input.value = JSON.stringify(initial, null, 2);
  const stored = ctx.mode === "edit" && spec.secret && ctx.values[spec.name] !== undefined;
  const shell = fieldShell({
    path: spec.path,
    label: spec.title,
    required: spec.required,
    help: [spec.description, t("form.jsonHelp")].filter(Boolean).join(" "),
    hint: stored ? t("form.storedPlain") : null,
    control: input,
    inputId: id,
  });
  return {
    ...shell,
    get(errors) {
      const raw = input.value.trim();
      if (!raw) return emptyValue(spec, ctx.mode);
      try {
        return JSON.parse(raw);
      } catch (error) {
        errors.push({ field: spec.path, message: t("form.badJson", { message: error.message }) });
        return OMIT;
      }
    },
  };
}

const WIDGETS = {
  text: textWidget,
  url: textWidget,
  secret: textWidget,
  textarea: textWidget,
  number: numberWidget,
  boolean: booleanWidget,
  enum: enumWidget,
  multienum: multiEnumWidget,
  tags: tagsWidget,
  map: mapWidget,
  json: jsonWidget,
};

/**
 * The settings form of one channel type. `values` are the stored settings when editing (secrets
 * arrive masked and are never put into an input).
 */
export function schemaForm(schema, { mode = "create", values = {}, prefix = "config" } = {}) {
  const ctx = { mode, values: values || {} };
  const widgets = fieldSpecs(schema, prefix).map((spec) => ({ spec, ...WIDGETS[spec.kind](spec, ctx) }));
  return {
    widgets,
    element: h("div", { class: "fields" }, widgets.map((w) => w.wrap)),
    /** {value, errors}: the settings to send, and what could not be read. */
    collect() {
      const errors = [];
      const value = {};
      for (const w of widgets) {
        const v = w.get(errors);
        if (v !== OMIT) value[w.spec.name] = v;
      }
      return { value, errors };
    },
  };
}
