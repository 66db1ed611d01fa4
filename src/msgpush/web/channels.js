// Push channels: the list, the type picker, the create / edit form, Test Push, delete.

import { api, query } from "./api.js";
import { confirmDialog, fill, h, icon, timeEl, toast, uid } from "./dom.js";
import { fieldShell, schemaForm } from "./form.js";
import { t, typeDescription, typeName } from "./i18n.js";
import { errorPanel, limitsText, loadTypes, pageHead, resultPanel, typeBadge, typeCell } from "./ui.js";

const PAGE_SIZE = 50;

function channelHref(channel) {
  return `#/channels/${encodeURIComponent(channel.id)}/edit`;
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

async function deleteChannel(channel) {
  const confirmed = await confirmDialog({
    title: t("channels.deleteTitle"),
    message: t("channels.deleteText", { name: channel.name }),
    confirmLabel: t("common.delete"),
  });
  if (!confirmed) return false;
  try {
    await api.del(`/channels/${encodeURIComponent(channel.id)}`);
  } catch (error) {
    toast(error.message, "error");
    return false;
  }
  toast(t("channels.deleted", { name: channel.name }));
  return true;
}

// -- the list -------------------------------------------------------------------------------

export async function channelsPage(ctx) {
  const { main, query: params } = ctx;
  const types = await loadTypes();
  const state = {
    q: params.get("q") || "",
    type: params.get("type") || "",
    items: [],
    next: null,
    results: new Map(), // channel id -> Test Push answer shown under its row
    testing: new Set(),
  };

  const searchId = uid("search");
  const typeId = uid("type");
  const search = h("input", {
    id: searchId,
    class: "input",
    type: "search",
    value: state.q,
    placeholder: t("channels.searchPlaceholder"),
    autocomplete: "off",
  });
  const typeSelect = h(
    "select",
    { id: typeId, class: "input select" },
    h("option", { value: "", text: t("channels.allTypes") }),
    types.map((ty) => h("option", { value: ty.type, selected: ty.type === state.type, text: `${typeName(ty.type, ty.name)} (${ty.type})` })),
  );
  const count = h("p", { class: "count muted", "aria-live": "polite" });
  const host = h("div", { class: "table-host" });

  fill(main, 
    pageHead({
      title: t("channels.title"),
      intro: t("channels.intro"),
      actions: [h("a", { class: "btn btn-primary", href: "#/channels/new" }, icon("plus"), h("span", { text: t("channels.new") }))],
    }),
    h(
      "div",
      { class: "toolbar", role: "search" },
      h("div", { class: "tool" }, h("label", { class: "sr-only", for: searchId, text: t("channels.search") }), h("span", { class: "input-icon" }, icon("search"), search)),
      h("div", { class: "tool" }, h("label", { class: "tool-label", for: typeId, text: t("channels.filterType") }), typeSelect),
      count,
    ),
    host,
  );

  const remember = () => {
    history.replaceState(null, "", `#/channels${query({ q: state.q, type: state.type })}`);
  };

  const load = async (more = false) => {
    const answer = await api.get(
      `/channels${query({ q: state.q, type: state.type, limit: PAGE_SIZE, cursor: more ? state.next : "" })}`,
    );
    if (!ctx.isCurrent()) return;
    state.items = more ? [...state.items, ...answer.items] : answer.items;
    state.next = answer.next_cursor;
    keepFocus(host, draw);
  };

  const reload = () =>
    load().catch((error) => {
      if (ctx.isCurrent()) fill(host, errorPanel(error, reload));
    });

  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.q = search.value.trim();
      remember();
      reload();
    }, 250);
  });
  typeSelect.addEventListener("change", () => {
    state.type = typeSelect.value;
    remember();
    reload();
  });

  const toggle = async (channel, button) => {
    const wanted = !channel.enabled;
    button.disabled = true;
    try {
      const saved = await api.patch(`/channels/${encodeURIComponent(channel.id)}`, { enabled: wanted });
      Object.assign(channel, saved);
      toast(t(wanted ? "channels.enabledToast" : "channels.disabledToast", { name: channel.name }));
    } catch (error) {
      toast(error.message, "error");
    }
    keepFocus(host, draw);
  };

  const test = async (channel) => {
    state.testing.add(channel.id);
    keepFocus(host, draw);
    try {
      const result = await api.post(`/channels/${encodeURIComponent(channel.id)}/test`, {});
      state.results.set(channel.id, result);
      toast(`${channel.name}: ${result.ok ? t("test.ok") : t("test.fail")}`, result.ok ? "ok" : "error");
    } catch (error) {
      state.results.set(channel.id, { ok: false, diagnosis: error.message });
    }
    state.testing.delete(channel.id);
    await load().catch(() => keepFocus(host, draw)); // the API kept it as the last test
  };

  const remove = async (channel) => {
    if (await deleteChannel(channel)) {
      state.results.delete(channel.id);
      await reload();
      main.querySelector("h1").focus();
    }
  };

  function row(channel) {
    const ty = types.find((x) => x.type === channel.type);
    const lastTest = channel.last_test;
    const stats = channel.stats_24h || { deliveries: 0, failed: 0 };
    const testing = state.testing.has(channel.id);
    const key = channel.id;
    const cells = [
      h(
        "td",
        { class: "cell-name", dataset: { label: t("channels.col.name") } },
        h("a", { class: "name-link", href: channelHref(channel), dataset: { focus: `name-${key}` }, text: channel.name }),
        channel.description ? h("p", { class: "muted small clamp", text: channel.description }) : null,
      ),
      h("td", { dataset: { label: t("channels.col.type") } }, typeCell(channel.type, ty ? ty.name : channel.type_name)),
      h(
        "td",
        { class: "cell-status", dataset: { label: t("channels.col.status") } },
        h(
          "button",
          {
            type: "button",
            role: "switch",
            class: "switch-btn",
            "aria-checked": String(channel.enabled),
            "aria-label": t("channels.toggle", { name: channel.name }),
            dataset: { focus: `toggle-${key}` },
            onclick: (event) => toggle(channel, event.currentTarget),
          },
          h("span", { class: "track", "aria-hidden": "true" }, h("span", { class: "thumb" })),
        ),
        h("span", { class: channel.enabled ? "on-text" : "off-text muted", text: channel.enabled ? t("channels.enabled") : t("channels.disabled") }),
      ),
      h(
        "td",
        { class: "cell-test", dataset: { label: t("channels.col.lastTest") } },
        lastTest
          ? h(
              "div",
              { class: "last-test" },
              h(
                "span",
                { class: `pill ${lastTest.ok ? "pill-ok" : "pill-fail"}` },
                icon(lastTest.ok ? "check" : "x", "icon icon-xs"),
                lastTest.ok ? t("channels.testPassed") : t("channels.testFailed"),
              ),
              h("span", { class: "muted small last-test-at" }, timeEl(channel.last_test_at)),
              !lastTest.ok && lastTest.diagnosis ? h("p", { class: "muted small clamp", title: lastTest.diagnosis, text: lastTest.diagnosis }) : null,
            )
          : h("span", { class: "muted", text: t("channels.neverTested") }),
      ),
      h(
        "td",
        { class: "cell-stats", dataset: { label: t("channels.col.stats") } },
        h(
          "a",
          { class: "stat-link", href: `#/deliveries${query({ channel: channel.id })}` },
          t("channels.deliveries", { n: stats.deliveries }),
        ),
        stats.failed
          ? h(
              "a",
              { class: "pill pill-fail", href: `#/deliveries${query({ channel: channel.id, status: "failed" })}` },
              t("channels.failed", { n: stats.failed }),
            )
          : h("span", { class: "muted small", text: t("channels.noFailures") }),
      ),
      h(
        "td",
        { class: "cell-actions", dataset: { label: t("channels.col.actions") } },
        h(
          "div",
          { class: "row-actions" },
          h(
            "button",
            {
              type: "button",
              class: "btn btn-sm",
              "aria-disabled": testing ? "true" : undefined,
              "aria-label": t("channels.testFor", { name: channel.name }),
              dataset: { focus: `test-${key}` },
              onclick: () => {
                if (!state.testing.has(channel.id)) test(channel);
              },
            },
            testing ? h("span", { class: "spinner spinner-sm", "aria-hidden": "true" }) : icon("send"),
            h("span", { text: testing ? t("channels.testing") : t("channels.test") }),
          ),
          h("a", { class: "btn btn-sm btn-ghost", href: channelHref(channel), "aria-label": t("channels.editFor", { name: channel.name }) }, icon("edit"), h("span", { text: t("common.edit") })),
          h(
            "button",
            {
              type: "button",
              class: "icon-btn danger",
              "aria-label": t("channels.deleteFor", { name: channel.name }),
              title: t("common.delete"),
              dataset: { focus: `delete-${key}` },
              onclick: () => remove(channel),
            },
            icon("trash"),
          ),
        ),
      ),
    ];
    const rows = [h("tr", { dataset: { channel: channel.name } }, cells)];
    const result = state.results.get(channel.id);
    if (result) {
      const close = h(
        "button",
        {
          type: "button",
          class: "icon-btn",
          "aria-label": t("common.close"),
          dataset: { focus: `close-${key}` },
          onclick: () => {
            state.results.delete(channel.id);
            keepFocus(host, draw);
            const button = host.querySelector(`[data-focus="test-${CSS.escape(key)}"]`);
            if (button) button.focus();
          },
        },
        icon("x"),
      );
      rows.push(
        h(
          "tr",
          { class: "result-row", dataset: { resultFor: channel.name } },
          h("td", { colspan: "6" }, h("div", { class: "result-wrap" }, h("p", { class: "result-caption", text: t("channels.resultTitle", { name: channel.name }) }), resultPanel(result), close)),
        ),
      );
    }
    return rows;
  }

  function draw() {
    const n = state.items.length;
    count.textContent = n === 1 ? t("channels.count1") : t("channels.count", { n: state.next ? `${n}+` : n });
    if (!n) {
      const filtered = state.q || state.type;
      fill(host, 
        h(
          "div",
          { class: "empty" },
          h("div", { class: "empty-art", "aria-hidden": "true" }, icon("send", "icon icon-xl")),
          h("h2", { text: filtered ? t("channels.noMatch") : t("channels.emptyTitle") }),
          filtered ? null : h("p", { class: "muted", text: t("channels.emptyText") }),
          filtered ? null : h("a", { class: "btn btn-primary", href: "#/channels/new" }, icon("plus"), h("span", { text: t("channels.new") })),
        ),
      );
      return;
    }
    fill(host, 
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "table table-channels" },
          h("caption", { class: "sr-only", text: t("channels.title") }),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["name", "type", "status", "lastTest", "stats", "actions"].map((c) => h("th", { scope: "col", text: t(`channels.col.${c}`) })),
            ),
          ),
          h("tbody", {}, state.items.map(row)),
        ),
      ),
      state.next
        ? h("div", { class: "more" }, h("button", { type: "button", class: "btn", dataset: { focus: "more" }, onclick: () => load(true), text: t("common.more") }))
        : null,
    );
  }

  await load();
}

// -- create: pick a type --------------------------------------------------------------------

export async function typePickerPage(ctx) {
  const types = await loadTypes();
  fill(ctx.main, 
    pageHead({ title: t("create.title"), intro: t("create.pickIntro"), back: { href: "#/channels", label: t("nav.channels") } }),
    steps(1),
    types.length
      ? h(
          "ul",
          { class: "type-grid", "aria-label": t("create.step1") },
          types.map((ty) => {
            const limits = limitsText(ty.limits && ty.limits.rate);
            return h(
              "li",
              {},
              h(
                "a",
                { class: "type-card", href: `#/channels/new/${encodeURIComponent(ty.type)}`, dataset: { type: ty.type } },
                typeBadge(ty.type, "vendor-lg"),
                h(
                  "span",
                  { class: "type-card-body" },
                  h("span", { class: "type-card-title" }, h("strong", { text: typeName(ty.type, ty.name) }), h("code", { class: "type-id", text: ty.type })),
                  h("span", { class: "type-card-desc", text: typeDescription(ty) }),
                  limits ? h("span", { class: "type-card-limits muted small" }, icon("clock", "icon icon-xs"), t("create.limits", { limits })) : null,
                ),
                icon("chevron", "icon chev"),
              ),
            );
          }),
        )
      : h("p", { class: "panel", text: t("create.noTypes") }),
  );
}

function steps(active) {
  return h(
    "ol",
    { class: "steps" },
    [t("create.step1"), t("create.step2")].map((label, i) =>
      h(
        "li",
        { class: i + 1 === active ? "step active" : i + 1 < active ? "step done" : "step", "aria-current": i + 1 === active ? "step" : undefined },
        h("span", { class: "step-n", "aria-hidden": "true", text: String(i + 1) }),
        h("span", { text: label }),
      ),
    ),
  );
}

// -- create and edit: the form --------------------------------------------------------------

export async function createPage(ctx, typeId) {
  const types = await loadTypes();
  const type = types.find((x) => x.type === typeId);
  if (!type) {
    fill(ctx.main, 
      pageHead({ title: t("create.title"), back: { href: "#/channels/new", label: t("create.changeType") } }),
      errorPanel(new Error(t("create.unknownType", { type: typeId }))),
    );
    return;
  }
  channelForm(ctx, { mode: "create", type });
}

export async function editPage(ctx, id) {
  const [types, channel] = await Promise.all([loadTypes(), api.get(`/channels/${encodeURIComponent(id)}`)]);
  const type = types.find((x) => x.type === channel.type);
  if (!type) {
    fill(ctx.main, 
      pageHead({ title: t("edit.title"), back: { href: "#/channels", label: t("nav.channels") } }),
      errorPanel(new Error(t("create.unknownType", { type: channel.type }))),
    );
    return;
  }
  channelForm(ctx, { mode: "edit", type, channel });
}

function channelForm(ctx, { mode, type, channel }) {
  const editing = mode === "edit";
  const vendor = typeName(type.type, type.name);
  const shells = [];

  // basics
  const nameId = uid("f");
  const nameInput = h("input", { id: nameId, name: "name", class: "input", type: "text", autocomplete: "off", spellcheck: "false", maxlength: 128, value: editing ? channel.name : "" });
  const descId = uid("f");
  const descInput = h("textarea", { id: descId, name: "description", class: "input", rows: 2, maxlength: 2000 });
  descInput.value = editing ? channel.description || "" : "";
  const enabledId = uid("f");
  const enabledInput = h("input", { id: enabledId, name: "enabled", type: "checkbox", class: "switch", role: "switch", checked: editing ? channel.enabled : true });
  const nameShell = fieldShell({ path: "name", label: t("form.name"), required: true, help: t("form.nameHelp"), control: nameInput, inputId: nameId });
  const descShell = fieldShell({ path: "description", label: t("form.description"), help: t("form.descriptionHelp"), control: descInput, inputId: descId });
  const enabledShell = fieldShell({ path: "enabled", label: t("form.enabled"), help: t("form.enabledHelp"), control: enabledInput, inputId: enabledId, inline: true });
  shells.push(nameShell, descShell, enabledShell);

  // settings from the type's schema
  const settings = schemaForm(type.schema || {}, { mode, values: editing ? channel.config : {} });
  shells.push(...settings.widgets);

  // rate limit
  const vendorRate = (type.limits && type.limits.rate) || {};
  const rateInputs = {};
  const rateFields = ["per_second", "per_minute", "per_hour"].map((key) => {
    const id = uid("f");
    const input = h("input", {
      id,
      name: `rate_limit.${key}`,
      class: "input input-number",
      type: "number",
      min: "1",
      step: "1",
      max: vendorRate[key] || undefined,
      placeholder: vendorRate[key] ? `≤ ${vendorRate[key]}` : "",
    });
    const stored = editing && channel.rate_limit ? channel.rate_limit[key] : undefined;
    if (stored) input.value = String(stored);
    rateInputs[key] = input;
    const label = { per_second: t("form.perSecond"), per_minute: t("form.perMinute"), per_hour: t("form.perHour") }[key];
    const shell = fieldShell({ path: `rate_limit.${key}`, label, control: input, inputId: id });
    shells.push(shell);
    return shell.wrap;
  });
  const rateShell = { path: "rate_limit", setError: () => {}, focus: () => rateInputs.per_second.focus(), wrap: null };
  const vendorLimit = limitsText(vendorRate);

  // Test Push
  const resultHost = h("div", { class: "result-host", "aria-live": "polite" });
  if (editing && channel.last_test) resultHost.append(resultPanel(channel.last_test, { at: channel.last_test_at }));
  const testButton = h("button", { type: "button", class: "btn", dataset: { action: "test" } }, icon("send"), h("span", { text: t("test.run") }));

  // errors without a field of their own
  const summary = h("div", { class: "form-errors", role: "alert", tabindex: "-1", hidden: true });

  const saveButton = h("button", { type: "submit", class: "btn btn-primary" }, icon("check"), h("span", { text: t("common.save") }));
  const deleteButton = editing
    ? h("button", { type: "button", class: "btn btn-danger-ghost" }, icon("trash"), h("span", { text: t("common.delete") }))
    : null;

  const form = h(
    "form",
    { class: "channel-form", novalidate: true, "aria-label": editing ? t("edit.title") : t("create.title") },
    summary,
    section({ title: t("form.basics") }, h("div", { class: "fields" }, nameShell.wrap, descShell.wrap, enabledShell.wrap)),
    section(
      {
        title: t("form.settings", { type: vendor }),
        aside: h("span", { class: "section-type" }, typeBadge(type.type), h("code", { class: "type-id", text: type.type })),
      },
      typeDescription(type) ? h("p", { class: "section-intro muted", text: typeDescription(type) }) : null,
      settings.element,
    ),
    section(
      { title: t("form.rateLimit"), aside: h("span", { class: "muted small", text: t("common.optional") }) },
      h("p", { class: "section-intro muted" }, t("form.rateLimitHelp"), " ", vendorLimit ? t("form.vendorLimit", { limits: vendorLimit }) : t("form.noVendorLimit")),
      h("div", { class: "rate-grid" }, rateFields),
    ),
    section(
      { title: t("test.title"), cls: "test-section" },
      h("p", { class: "section-intro muted", text: editing ? t("test.introSaved") : t("test.intro") }),
      h("div", { class: "test-row" }, testButton),
      resultHost,
    ),
    h(
      "div",
      { class: "form-actions" },
      deleteButton,
      h("span", { class: "spacer" }),
      h("a", { class: "btn", href: "#/channels", text: t("common.cancel") }),
      saveButton,
    ),
  );

  fill(ctx.main, 
    pageHead({
      title: editing ? `${t("edit.title")} · ${channel.name}` : t("create.title"),
      back: editing ? { href: "#/channels", label: t("nav.channels") } : { href: "#/channels/new", label: t("create.changeType") },
    }),
    editing ? null : steps(2),
    form,
  );

  // -- reading the form and showing errors

  function collect() {
    const errors = [];
    const { value: config, errors: configErrors } = settings.collect();
    errors.push(...configErrors);
    const rate = {};
    for (const [key, input] of Object.entries(rateInputs)) {
      if (input.validity.badInput) {
        errors.push({ field: `rate_limit.${key}`, message: t("form.notNumber", { value: "…" }) });
        continue;
      }
      const raw = input.value.trim();
      if (!raw) continue;
      const n = Number(raw);
      if (!Number.isInteger(n)) errors.push({ field: `rate_limit.${key}`, message: t("form.notInteger", { value: raw }) });
      else rate[key] = n;
    }
    const body = {
      name: nameInput.value.trim(),
      description: descInput.value,
      enabled: enabledInput.checked,
      config,
    };
    if (Object.keys(rate).length) body.rate_limit = rate;
    else if (editing) body.rate_limit = null;
    if (!editing) body.type = type.type;
    return { body, errors };
  }

  function shellFor(field) {
    if (!field) return null;
    let best = null;
    for (const shell of [...shells, rateShell]) {
      if (field === shell.path || field.startsWith(`${shell.path}.`)) {
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

  function showErrors(list) {
    clearErrors();
    const byShell = new Map();
    const general = [];
    for (const error of list) {
      const shell = shellFor(error.field);
      if (shell && shell !== rateShell) {
        if (!byShell.has(shell)) byShell.set(shell, []);
        byShell.get(shell).push(error.message);
      } else general.push(error.field && shell !== rateShell ? `${error.field}: ${error.message}` : error.message);
    }
    for (const [shell, messages] of byShell) shell.setError(messages);
    if (general.length || byShell.size) {
      summary.hidden = false;
      summary.append(
        h("p", { class: "form-errors-title" }, icon("alert", "icon icon-sm"), h("span", { text: byShell.size ? t("err.fixBelow") : general[0] })),
        byShell.size || general.length > 1 ? h("ul", {}, (byShell.size ? general : general.slice(1)).map((m) => h("li", { text: m }))) : null,
      );
    }
    // focus the first field in the page's order that has an error, else the summary
    const firstInvalid = shells.find((s) => byShell.has(s));
    if (firstInvalid && !general.length) firstInvalid.focus();
    else summary.focus();
  }

  function apiErrors(error) {
    if (error.status === 422 || error.status === 409 || error.status === 400) showErrors(error.fieldErrors());
    else showErrors([{ field: null, message: error.message }]);
  }

  // -- actions

  testButton.addEventListener("click", async () => {
    const { body, errors } = collect();
    if (errors.length) return showErrors(errors);
    clearErrors();
    testButton.disabled = true;
    testButton.lastChild.textContent = t("test.running");
    fill(resultHost, h("div", { class: "loading small" }, h("span", { class: "spinner", "aria-hidden": "true" }), t("test.running")));
    try {
      const result = editing
        ? await api.post(`/channels/${encodeURIComponent(channel.id)}/test`, {})
        : await api.post("/channels/test", { type: type.type, config: body.config, ...(body.name ? { name: body.name } : {}) });
      fill(resultHost, resultPanel(result));
    } catch (error) {
      fill(resultHost);
      apiErrors(error);
    } finally {
      testButton.disabled = false;
      testButton.lastChild.textContent = t("test.run");
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { body, errors } = collect();
    if (errors.length) return showErrors(errors);
    clearErrors();
    saveButton.disabled = true;
    saveButton.lastChild.textContent = t("common.saving");
    try {
      const saved = editing
        ? await api.patch(`/channels/${encodeURIComponent(channel.id)}`, body)
        : await api.post("/channels", body);
      toast(t(editing ? "edit.saved" : "create.saved", { name: saved.name }));
      location.hash = "#/channels";
    } catch (error) {
      apiErrors(error);
    } finally {
      saveButton.disabled = false;
      saveButton.lastChild.textContent = t("common.save");
    }
  });

  if (deleteButton) {
    deleteButton.addEventListener("click", async () => {
      if (await deleteChannel(channel)) location.hash = "#/channels";
    });
  }
}

function section({ title, aside = null, cls = "" }, ...content) {
  const id = uid("sec");
  return h(
    "section",
    { class: `form-section ${cls}`.trim(), "aria-labelledby": id },
    h("div", { class: "form-section-head" }, h("h2", { id, text: title }), aside),
    content,
  );
}
