// Rules: the list, and the create / edit form with a live preview of the message an event becomes.

import { api } from "./api.js";
import { confirmDialog, fill, h, icon, uid, toast } from "./dom.js";
import { fieldShell, schemaForm } from "./form.js";
import { t } from "./i18n.js";
import { errorPanel, facts, pageHead } from "./ui.js";

const LEVELS = ["info", "success", "warning", "error", "critical"];
const RECIPIENTS = ["users", "departments", "tags", "chats"];

function ruleHref(rule) {
  return `#/rules/${encodeURIComponent(rule.id)}/edit`;
}

/** Redraw `container` with `draw()`, keeping keyboard focus on the "same" control. */
function keepFocus(container, draw) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focus : null;
  draw();
  if (key) {
    const again = container.querySelector(`[data-focus="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

/** "env = prod", "team =~ data|ml": a label condition as people read it. */
function condition(name, spec) {
  for (const op of ["=~", "!~", "!="]) {
    if (spec.startsWith(op)) return `${name} ${op} ${spec.slice(2)}`;
  }
  return `${name} = ${spec.startsWith("==") ? spec.slice(2) : spec}`;
}

async function deleteRule(rule) {
  const confirmed = await confirmDialog({
    title: t("rules.deleteTitle"),
    message: t("rules.deleteText", { name: rule.name }),
    confirmLabel: t("common.delete"),
  });
  if (!confirmed) return false;
  try {
    await api.del(`/rules/${encodeURIComponent(rule.id)}`);
  } catch (error) {
    toast(error.message, "error");
    return false;
  }
  toast(t("rules.deleted", { name: rule.name }));
  return true;
}

// -- the list -------------------------------------------------------------------------------

export async function rulesPage(ctx) {
  const { main } = ctx;
  const host = h("div", { class: "table-host" });
  const newButton = h("a", { class: "btn btn-primary", href: "#/rules/new" }, icon("plus"), h("span", { text: t("rules.new") }));
  fill(main, pageHead({ title: t("rules.title"), intro: t("rules.intro"), actions: [newButton] }), host, intake());

  let items = [];
  const load = async () => {
    items = (await api.get("/rules")).items || [];
    if (ctx.isCurrent()) keepFocus(host, draw);
  };

  const toggle = async (rule, button) => {
    button.disabled = true;
    try {
      Object.assign(rule, await api.patch(`/rules/${encodeURIComponent(rule.id)}`, { enabled: !rule.enabled }));
      toast(t(rule.enabled ? "rules.enabledToast" : "rules.disabledToast", { name: rule.name }));
    } catch (error) {
      toast(error.message, "error");
    }
    keepFocus(host, draw);
  };

  const remove = async (rule) => {
    if (await deleteRule(rule)) {
      await load();
      main.querySelector("h1").focus();
    }
  };

  function row(rule) {
    const key = rule.id;
    const labels = Object.entries(rule.labels || {});
    const missing = new Set(rule.missing_channels || []);
    return h(
      "tr",
      { dataset: { rule: rule.name } },
      h(
        "td",
        { class: "cell-name", dataset: { label: t("rules.col.name") } },
        h("a", { class: "name-link", href: ruleHref(rule), dataset: { focus: `name-${key}` }, text: rule.name }),
        rule.description ? h("p", { class: "muted small clamp", text: rule.description }) : null,
      ),
      h(
        "td",
        { dataset: { label: t("rules.col.events") } },
        h("div", { class: "rule-chips" }, rule.event_types.map((p) => h("code", { class: "rule-chip", text: p }))),
        rule.min_level !== "info" ? h("p", { class: "muted small", text: t("rules.atLeast", { level: rule.min_level }) }) : null,
        labels.length ? h("div", { class: "rule-chips" }, labels.map(([k, v]) => h("code", { class: "rule-chip rule-chip-label", text: condition(k, v) }))) : null,
      ),
      h(
        "td",
        { dataset: { label: t("rules.col.channels") } },
        h(
          "div",
          { class: "rule-chips" },
          rule.channels.map((name, i) =>
            missing.has(rule.channel_ids[i])
              ? h("span", { class: "pill pill-fail", title: t("rules.channelGone"), text: `${name} ✕` })
              : h("a", { class: "rule-chip rule-chip-channel", href: `#/deliveries?channel=${encodeURIComponent(rule.channel_ids[i])}`, text: name }),
          ),
        ),
      ),
      h(
        "td",
        { dataset: { label: t("rules.col.grouping") } },
        rule.group_window_s
          ? h(
              "span",
              { class: "small" },
              t("rules.groupedBy", {
                keys: rule.group_by.length ? rule.group_by.join(", ") : t("rules.everything"),
                s: rule.group_window_s,
              }),
            )
          : h("span", { class: "muted small", text: t("rules.notGrouped") }),
      ),
      h(
        "td",
        { class: "cell-status", dataset: { label: t("rules.col.status") } },
        h(
          "button",
          {
            type: "button",
            role: "switch",
            class: "switch-btn",
            "aria-checked": String(rule.enabled),
            "aria-label": t("rules.toggle", { name: rule.name }),
            dataset: { focus: `toggle-${key}` },
            onclick: (event) => toggle(rule, event.currentTarget),
          },
          h("span", { class: "track", "aria-hidden": "true" }, h("span", { class: "thumb" })),
        ),
        h("span", { class: rule.enabled ? "on-text" : "off-text muted", text: rule.enabled ? t("channels.enabled") : t("channels.disabled") }),
      ),
      h(
        "td",
        { class: "cell-actions", dataset: { label: t("rules.col.actions") } },
        h(
          "div",
          { class: "row-actions" },
          h("a", { class: "btn btn-sm btn-ghost", href: ruleHref(rule), "aria-label": t("rules.editFor", { name: rule.name }) }, icon("edit"), h("span", { text: t("common.edit") })),
          h(
            "button",
            {
              type: "button",
              class: "icon-btn danger",
              "aria-label": t("rules.deleteFor", { name: rule.name }),
              title: t("common.delete"),
              dataset: { focus: `delete-${key}` },
              onclick: () => remove(rule),
            },
            icon("trash"),
          ),
        ),
      ),
    );
  }

  function draw() {
    if (!items.length) {
      fill(
        host,
        h(
          "div",
          { class: "empty" },
          h("div", { class: "empty-art", "aria-hidden": "true" }, icon("rules", "icon icon-xl")),
          h("h2", { text: t("rules.emptyTitle") }),
          h("p", { class: "muted", text: t("rules.emptyText") }),
          h("a", { class: "btn btn-primary", href: "#/rules/new" }, icon("plus"), h("span", { text: t("rules.new") })),
        ),
      );
      return;
    }
    fill(
      host,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "table table-rules" },
          h("caption", { class: "sr-only", text: t("rules.title") }),
          h("thead", {}, h("tr", {}, ["name", "events", "channels", "grouping", "status", "actions"].map((c) => h("th", { scope: "col", text: t(`rules.col.${c}`) })))),
          h("tbody", {}, items.map(row)),
        ),
      ),
      h("p", { class: "muted small rules-order", text: t("rules.order") }),
    );
  }

  await load();
}

/** Where events come in: the endpoints a platform or an alerting tool posts to. */
function intake() {
  const base = `${location.origin}/api/v1`;
  return h(
    "section",
    { class: "panel intake", "aria-label": t("rules.intakeTitle") },
    h("h2", { text: t("rules.intakeTitle") }),
    facts(
      [
        [t("rules.intakeEvents"), h("code", { text: `POST ${base}/events` })],
        [t("rules.intakeAlertmanager"), h("code", { text: `${base}/integrations/alertmanager?token=…` })],
        [t("rules.intakeGrafana"), h("code", { text: `${base}/integrations/grafana?token=…` })],
      ],
      "facts facts-grid",
    ),
  );
}

// -- create and edit ------------------------------------------------------------------------

export async function ruleCreatePage(ctx) {
  const [channels, templates] = await Promise.all([api.get("/channels?limit=500"), api.get("/templates")]);
  ruleForm(ctx, { mode: "create", channels: channels.items || [], templates: templates.items || [] });
}

export async function ruleEditPage(ctx, id) {
  const [rule, channels, templates] = await Promise.all([
    api.get(`/rules/${encodeURIComponent(id)}`),
    api.get("/channels?limit=500"),
    api.get("/templates"),
  ]);
  ruleForm(ctx, { mode: "edit", rule, channels: channels.items || [], templates: templates.items || [] });
}

function section({ title, intro }, ...content) {
  const id = uid("sec");
  return h(
    "section",
    { class: "form-section", "aria-labelledby": id },
    h("div", { class: "form-section-head" }, h("h2", { id, text: title })),
    intro ? h("p", { class: "section-intro muted", text: intro }) : null,
    content,
  );
}

/** A type id usable for a preview: a built-in type's own, or a family's sample (system.*). */
function previewTypes(templates) {
  return templates
    .filter((item) => item.sample)
    .map((item) => {
      const concrete = item.event_type.includes("*") ? item.sample.type : item.event_type;
      return { value: concrete, label: `${item.name} · ${concrete}` };
    });
}

function globMatch(pattern, value) {
  const source = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${source}$`).test(value);
}

function ruleForm(ctx, { mode, rule, channels, templates }) {
  const editing = mode === "edit";
  const stored = rule || {};
  const names = channels.map((c) => c.name);
  for (const name of stored.channels || []) if (!names.includes(name)) names.push(name);
  const template = stored.template || {};
  const recipients = stored.recipients || {};
  const values = {
    ...stored,
    template_title: template.title || "",
    template_content: template.content || "",
    template_format: template.format || null,
    ...Object.fromEntries(RECIPIENTS.map((k) => [`recipients_${k}`, recipients[k] || []])),
  };
  const opts = { mode, values, prefix: "rule" };
  const form = (properties, required = []) => schemaForm({ type: "object", properties, required }, opts);

  const basics = form(
    {
      name: { type: "string", title: t("rules.f.name"), description: t("rules.f.nameHelp"), maxLength: 128 },
      description: { type: "string", title: t("rules.f.description"), format: "textarea" },
      enabled: { type: "boolean", title: t("rules.f.enabled"), description: t("rules.f.enabledHelp"), default: true },
    },
    ["name"],
  );
  const match = form(
    {
      event_types: {
        type: "array",
        items: { type: "string" },
        title: t("rules.f.eventTypes"),
        description: t("rules.f.eventTypesHelp"),
        default: ["alert.*"],
      },
      min_level: { type: "string", enum: LEVELS, title: t("rules.f.minLevel"), description: t("rules.f.minLevelHelp"), default: "info" },
      labels: {
        type: "object",
        additionalProperties: { type: "string" },
        title: t("rules.f.labels"),
        description: t("rules.f.labelsHelp"),
      },
    },
    ["event_types"],
  );
  const where = form(
    {
      channels: {
        type: "array",
        items: { type: "string", enum: names },
        title: t("rules.f.channels"),
        description: names.length ? t("rules.f.channelsHelp") : t("rules.f.noChannels"),
      },
      ...Object.fromEntries(
        RECIPIENTS.map((k) => [
          `recipients_${k}`,
          { type: "array", items: { type: "string" }, title: t(`rules.f.recipients.${k}`) },
        ]),
      ),
    },
    ["channels"],
  );
  const looks = form({
    template_title: { type: "string", title: t("rules.f.templateTitle"), description: t("rules.f.templateTitleHelp"), maxLength: 4096 },
    template_content: { type: "string", format: "textarea", title: t("rules.f.templateContent"), description: t("rules.f.templateContentHelp") },
    template_format: { anyOf: [{ type: "string", enum: ["markdown", "text"] }, { type: "null" }], title: t("rules.f.templateFormat") },
  });
  const storms = form({
    group_by: { type: "array", items: { type: "string" }, title: t("rules.f.groupBy"), description: t("rules.f.groupByHelp") },
    group_window_s: {
      type: "integer",
      minimum: 0,
      maximum: 86400,
      title: t("rules.f.groupWindow"),
      description: t("rules.f.groupWindowHelp"),
    },
  });
  const parts = [basics, match, where, looks, storms];
  const shells = parts.flatMap((p) => p.widgets);

  // recipients only matter for app channels: folded away unless set
  const recipientsOpen = RECIPIENTS.some((k) => (recipients[k] || []).length);
  const recipientWidgets = where.widgets.filter((w) => w.spec.name.startsWith("recipients_"));
  for (const w of recipientWidgets) w.wrap.remove();
  const recipientsBox = h(
    "details",
    { class: "rule-more", open: recipientsOpen },
    h("summary", {}, icon("chevron", "icon icon-sm chev"), h("span", { text: t("rules.f.recipients") })),
    h("p", { class: "muted small", text: t("rules.f.recipientsHelp") }),
    h("div", { class: "fields" }, recipientWidgets.map((w) => w.wrap)),
  );
  where.element.append(recipientsBox);

  // the preview beside the form
  const types = previewTypes(templates);
  const previewId = uid("f");
  const typeSelect = h(
    "select",
    { id: previewId, class: "input select", name: "preview_type" },
    types.map((ty) => h("option", { value: ty.value, text: ty.label })),
  );
  const wanted = stored.event_types && stored.event_types.length ? stored.event_types : ["alert.*"];
  const first = types.find((ty) => wanted.some((p) => globMatch(p, ty.value)));
  if (first) typeSelect.value = first.value;
  const typeShell = fieldShell({ path: "preview_type", label: t("rules.preview.type"), control: typeSelect, inputId: previewId });
  const previewButton = h("button", { type: "button", class: "btn" }, icon("eye"), h("span", { text: t("rules.preview.run") }));
  const previewHost = h("div", { class: "result-host", "aria-live": "polite" });

  const summary = h("div", { class: "form-errors", role: "alert", tabindex: "-1", hidden: true });
  const saveButton = h("button", { type: "submit", class: "btn btn-primary" }, icon("check"), h("span", { text: t("common.save") }));
  const deleteButton = editing ? h("button", { type: "button", class: "btn btn-danger-ghost" }, icon("trash"), h("span", { text: t("common.delete") })) : null;

  const formEl = h(
    "form",
    { class: "channel-form rule-form", novalidate: true, "aria-label": editing ? t("rules.editTitle") : t("rules.newTitle") },
    summary,
    section({ title: t("rules.s.basics") }, basics.element),
    section({ title: t("rules.s.match"), intro: t("rules.s.matchIntro") }, match.element),
    section({ title: t("rules.s.where"), intro: t("rules.s.whereIntro") }, where.element),
    section({ title: t("rules.s.looks"), intro: t("rules.s.looksIntro") }, looks.element),
    section({ title: t("rules.s.storms"), intro: t("rules.s.stormsIntro") }, storms.element),
    h(
      "section",
      { class: "form-section test-section preview-section", "aria-labelledby": "rule-preview-title" },
      h("div", { class: "form-section-head" }, h("h2", { id: "rule-preview-title", text: t("rules.preview.title") })),
      h("p", { class: "section-intro muted", text: t("rules.preview.intro") }),
      typeShell.wrap,
      h("div", { class: "test-row" }, previewButton),
      previewHost,
    ),
    h(
      "div",
      { class: "form-actions" },
      deleteButton,
      h("span", { class: "spacer" }),
      h("a", { class: "btn", href: "#/rules", text: t("common.cancel") }),
      saveButton,
    ),
  );

  fill(
    ctx.main,
    pageHead({
      title: editing ? `${t("rules.editTitle")} · ${stored.name}` : t("rules.newTitle"),
      back: { href: "#/rules", label: t("rules.title") },
    }),
    formEl,
  );

  // -- reading the form

  function collect() {
    const errors = [];
    const v = {};
    for (const part of parts) {
      const { value, errors: found } = part.collect();
      Object.assign(v, value);
      errors.push(...found);
    }
    const list = (x) => (Array.isArray(x) ? x : []);
    const body = {
      name: (v.name || "").trim(),
      description: v.description || "",
      enabled: v.enabled !== false,
      event_types: list(v.event_types),
      min_level: v.min_level || "info",
      labels: v.labels && typeof v.labels === "object" ? v.labels : {},
      channels: list(v.channels),
      recipients: null,
      template: null,
      group_by: list(v.group_by),
      group_window_s: typeof v.group_window_s === "number" ? v.group_window_s : null,
    };
    const people = Object.fromEntries(RECIPIENTS.map((k) => [k, list(v[`recipients_${k}`])]));
    if (RECIPIENTS.some((k) => people[k].length)) body.recipients = people;
    body.template = templateOf(v);
    return { body, errors };
  }

  function templateOf(v) {
    const title = (v.template_title || "").trim();
    const content = v.template_content || "";
    if (!title && !content.trim()) return null;
    const template = {};
    if (title) template.title = title;
    if (content.trim()) template.content = content;
    if (v.template_format) template.format = v.template_format;
    return template;
  }

  // API fields -> the widget showing them
  const FIELD_ALIASES = {
    "template.title": "template_title",
    "template.content": "template_content",
    "template.format": "template_format",
    template: "template_content",
    ...Object.fromEntries(RECIPIENTS.map((k) => [`recipients.${k}`, `recipients_${k}`])),
  };

  function shellFor(field) {
    if (!field) return null;
    let name = field;
    for (const [api_, local] of Object.entries(FIELD_ALIASES)) {
      if (field === api_ || field.startsWith(`${api_}.`)) {
        name = local;
        break;
      }
    }
    const path = name.startsWith("rule.") ? name : `rule.${name}`;
    let best = null;
    for (const shell of shells) {
      if (path === shell.path || path.startsWith(`${shell.path}.`)) {
        if (!best || shell.path.length > best.path.length) best = shell;
      }
    }
    return best;
  }

  function clearErrors() {
    for (const shell of shells) shell.setError([]);
    summary.hidden = true;
    summary.textContent = "";
  }

  function showErrors(list, { focus = true } = {}) {
    clearErrors();
    const byShell = new Map();
    const general = [];
    for (const error of list) {
      const shell = shellFor(error.field);
      if (shell) {
        if (!byShell.has(shell)) byShell.set(shell, []);
        byShell.get(shell).push(error.message);
      } else general.push(error.field ? `${error.field}: ${error.message}` : error.message);
    }
    for (const [shell, messages] of byShell) shell.setError(messages);
    summary.hidden = false;
    summary.append(
      h("p", { class: "form-errors-title" }, icon("alert", "icon icon-sm"), h("span", { text: byShell.size ? t("err.fixBelow") : general[0] })),
      byShell.size || general.length > 1 ? h("ul", {}, (byShell.size ? general : general.slice(1)).map((m) => h("li", { text: m }))) : null,
    );
    if (!focus) return;
    const firstInvalid = shells.find((s) => byShell.has(s));
    if (firstInvalid && !general.length) {
      if (firstInvalid.wrap.closest("details")) firstInvalid.wrap.closest("details").open = true;
      firstInvalid.focus();
    } else summary.focus();
  }

  function apiErrors(error, options) {
    if ([400, 409, 422].includes(error.status)) showErrors(error.fieldErrors(), options);
    else showErrors([{ field: null, message: error.message }], options);
  }

  // -- preview

  async function preview({ quiet = false } = {}) {
    const { body, errors } = collect();
    if (errors.length) return showErrors(errors);
    previewButton.disabled = true;
    fill(previewHost, h("div", { class: "loading small" }, h("span", { class: "spinner", "aria-hidden": "true" }), t("common.loading")));
    try {
      const answer = await api.post("/templates/preview", { event_type: typeSelect.value, ...(body.template ? { template: body.template } : {}) });
      if (!quiet) clearErrors();
      fill(previewHost, messageCard(answer));
    } catch (error) {
      fill(previewHost);
      apiErrors(error, { focus: !quiet });
    } finally {
      previewButton.disabled = false;
    }
  }

  previewButton.addEventListener("click", () => preview());
  typeSelect.addEventListener("change", () => preview());

  formEl.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { body, errors } = collect();
    if (errors.length) return showErrors(errors);
    clearErrors();
    saveButton.disabled = true;
    saveButton.lastChild.textContent = t("common.saving");
    try {
      const saved = editing ? await api.patch(`/rules/${encodeURIComponent(stored.id)}`, body) : await api.post("/rules", body);
      toast(t(editing ? "rules.saved" : "rules.created", { name: saved.name }));
      location.hash = "#/rules";
    } catch (error) {
      apiErrors(error);
    } finally {
      saveButton.disabled = false;
      saveButton.lastChild.textContent = t("common.save");
    }
  });

  if (deleteButton) {
    deleteButton.addEventListener("click", async () => {
      if (await deleteRule(stored)) location.hash = "#/rules";
    });
  }

  preview({ quiet: true });
}

/** The message an event becomes: title, level, content, fields and links, as a card. */
function messageCard(answer) {
  const m = answer.message || {};
  const levelClass = { success: "pill-ok", warning: "pill-warn", error: "pill-fail", critical: "pill-fail" }[m.level] || "";
  return h(
    "div",
    { class: "preview" },
    h(
      "section",
      { class: "message-card preview-card", "aria-label": t("rules.preview.message") },
      h("div", { class: "preview-head" }, h("span", { class: `pill ${levelClass}`, text: m.level }), h("code", { class: "type-id", text: answer.event && answer.event.type })),
      m.title ? h("p", { class: "message-title", text: m.title }) : null,
      m.content ? h("pre", { class: "message-content", text: m.content }) : null,
      facts(Object.entries(m.fields || {}).map(([k, v]) => [k, v])),
      m.links && m.links.length
        ? h("p", { class: "preview-links" }, m.links.map((link) => h("a", { href: link.url, target: "_blank", rel: "noopener noreferrer", text: link.title })))
        : null,
    ),
    (answer.warnings || []).map((w) => h("p", { class: "callout callout-warn small" }, icon("alert", "icon icon-sm"), h("span", { text: w }))),
    h(
      "details",
      { class: "transcript" },
      h("summary", {}, icon("chevron", "icon icon-sm chev"), h("span", { text: t("rules.preview.event") })),
      h("pre", { class: "code", tabindex: "0" }, h("code", { text: JSON.stringify(answer.event, null, 2) })),
      h("p", { class: "muted small", text: t("rules.preview.variables") }),
    ),
  );
}
