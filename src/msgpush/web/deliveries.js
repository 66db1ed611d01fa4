// Delivery history: filters (channel, status, time), paging, each delivery's attempts, resend.

import { api, query } from "./api.js";
import { fill, formatTime, h, icon, isoToLocalInput, localInputToIso, openDialog, timeEl, toast } from "./dom.js";
import { t, typeName } from "./i18n.js";
import { errorPanel, facts, loadTypes, loadingPanel, pageHead, statusBadge, transcript, typeBadge } from "./ui.js";

const PAGE_SIZE = 25;
const STATUSES = ["queued", "sending", "retrying", "delivered", "failed", "cancelled"];
const IN_FLIGHT = new Set(["queued", "sending", "retrying"]);
const RESENDABLE = new Set(["failed", "cancelled"]);
const POLL_MS = 1500;

// cursors of the pages before this one, per filter set, so "Newer" can go back
const trail = new Map();

function filterKey(f) {
  return JSON.stringify([f.channel, f.status, f.since, f.until]);
}

export async function deliveriesPage(ctx) {
  const { main, query: params } = ctx;
  const filters = {
    channel: params.get("channel") || "",
    status: params.get("status") || "",
    since: params.get("since") || "",
    until: params.get("until") || "",
  };
  const cursor = params.get("cursor") || "";
  // page size: ?limit= in the address (1-500), else PAGE_SIZE
  const wanted = Number.parseInt(params.get("limit") || "", 10);
  const limit = wanted >= 1 && wanted <= 500 ? wanted : PAGE_SIZE;
  const size = limit === PAGE_SIZE ? "" : String(limit);
  const key = filterKey(filters);
  const previous = trail.get(key) || [];
  if (!cursor) trail.set(key, []);

  const [types, channelList] = await Promise.all([loadTypes(), api.get("/channels?limit=500").catch(() => ({ items: [] }))]);
  const channels = channelList.items || [];
  const typeNames = Object.fromEntries(types.map((x) => [x.type, x.name]));

  const ids = { channel: "dlv-channel", status: "dlv-status", since: "dlv-since", until: "dlv-until" };
  const channelSelect = h(
    "select",
    { id: ids.channel, name: "channel", class: "input select" },
    h("option", { value: "", text: t("dlv.allChannels") }),
    channels.map((c) => h("option", { value: c.id, text: c.name })),
  );
  if (filters.channel && !channels.some((c) => c.id === filters.channel || c.name === filters.channel)) {
    channelSelect.append(h("option", { value: filters.channel, text: filters.channel }));
  }
  const match = channels.find((c) => c.name === filters.channel);
  channelSelect.value = match ? match.id : filters.channel;
  const statusSelect = h(
    "select",
    { id: ids.status, name: "status", class: "input select" },
    h("option", { value: "", text: t("dlv.allStatuses") }),
    STATUSES.map((s) => h("option", { value: s, text: t(`status.${s}`) })),
  );
  statusSelect.value = STATUSES.includes(filters.status) ? filters.status : "";
  const sinceInput = h("input", { id: ids.since, name: "since", class: "input", type: "datetime-local", value: isoToLocalInput(filters.since) });
  const untilInput = h("input", { id: ids.until, name: "until", class: "input", type: "datetime-local", value: isoToLocalInput(filters.until) });
  const resetButton = h("button", { type: "button", id: "dlv-reset", class: "btn btn-ghost", text: t("dlv.reset") });

  const filterForm = h(
    "form",
    { class: "filters", "aria-label": t("dlv.filters"), role: "search" },
    h("div", { class: "filter" }, h("label", { for: ids.channel, text: t("dlv.channel") }), channelSelect),
    h("div", { class: "filter" }, h("label", { for: ids.status, text: t("dlv.status") }), statusSelect),
    h("div", { class: "filter filter-time" }, h("label", { for: ids.since, text: t("dlv.since") }), sinceInput),
    h("div", { class: "filter filter-time" }, h("label", { for: ids.until, text: t("dlv.until") }), untilInput),
    h("div", { class: "filter filter-actions" }, h("button", { type: "submit", id: "dlv-apply", class: "btn btn-primary", text: t("dlv.apply") }), resetButton),
  );

  const go = (next, nextCursor = "") => {
    ctx.navigate(`#/deliveries${query({ ...next, limit: size, cursor: nextCursor })}`, { keepFocus: true });
  };
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    go({
      channel: channelSelect.value,
      status: statusSelect.value,
      since: localInputToIso(sinceInput.value),
      until: localInputToIso(untilInput.value),
    });
  });
  resetButton.addEventListener("click", () => go({}));

  const live = h("p", { class: "live muted small", hidden: true }, h("span", { class: "pulse", "aria-hidden": "true" }), t("dlv.live"));
  const host = h("div", { class: "table-host" }, loadingPanel());
  const pager = h("nav", { class: "pager", "aria-label": t("dlv.page", { n: "" }).trim() });
  const refresh = h("button", { type: "button", class: "btn btn-ghost", onclick: () => load() }, icon("refresh"), h("span", { text: t("common.refresh") }));

  fill(main, pageHead({ title: t("dlv.title"), intro: t("dlv.intro"), actions: [refresh] }), filterForm, live, host, pager);

  let timer = null;
  let page = null;
  const filtered = Boolean(filters.channel || filters.status || filters.since || filters.until);

  async function load() {
    clearTimeout(timer);
    try {
      page = await api.get(`/deliveries${query({ ...filters, cursor, limit })}`);
    } catch (error) {
      if (ctx.isCurrent()) fill(host, errorPanel(error, load));
      return;
    }
    if (!ctx.isCurrent()) return;
    draw();
    const busy = page.items.some((d) => IN_FLIGHT.has(d.status));
    live.hidden = !busy;
    if (busy) timer = setTimeout(() => ctx.isCurrent() && load(), POLL_MS);
  }

  const resend = async (delivery) => {
    try {
      await api.post(`/deliveries/${encodeURIComponent(delivery.id)}/retry`, {});
      toast(t("dlv.resent", { id: delivery.id }));
    } catch (error) {
      toast(error.message, "error");
    }
    await load();
  };

  function resultCell(d) {
    if (d.status === "delivered") {
      return h("span", { class: "muted small" }, t("dlv.deliveredAt", { when: "" }).trim(), " ", timeEl(d.delivered_at), d.warning ? h("p", { class: "warn small clamp", text: d.warning }) : null);
    }
    return h(
      "div",
      {},
      d.error ? h("p", { class: "err-text small clamp", title: d.error, text: d.error }) : null,
      d.next_attempt_at ? h("p", { class: "muted small" }, t("dlv.nextAttempt", { when: "" }).trim(), " ", timeEl(d.next_attempt_at)) : null,
    );
  }

  function draw() {
    const focusKey = document.activeElement && host.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
    if (!page.items.length) {
      fill(host, 
        h("div", { class: "empty" }, h("div", { class: "empty-art", "aria-hidden": "true" }, icon("history", "icon icon-xl")), h("h2", { text: filtered ? t("dlv.emptyFiltered") : t("dlv.empty") })),
      );
    } else {
      fill(host, 
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "table table-deliveries" },
            h("caption", { class: "sr-only", text: t("dlv.title") }),
            h("thead", {}, h("tr", {}, ["created", "channel", "status", "attempts", "detail", "actions"].map((c) => h("th", { scope: "col", text: t(`dlv.col.${c}`) })))),
            h(
              "tbody",
              {},
              page.items.map((d) =>
                h(
                  "tr",
                  { dataset: { delivery: d.id, status: d.status } },
                  h("td", { class: "nowrap", dataset: { label: t("dlv.col.created") } }, h("span", { class: "mono small", text: formatTime(d.created_at) }), h("p", { class: "muted small" }, timeEl(d.created_at))),
                  h(
                    "td",
                    { dataset: { label: t("dlv.col.channel") } },
                    h(
                      "span",
                      { class: "type-cell" },
                      typeBadge(d.channel_type),
                      h(
                        "span",
                        { class: "type-text" },
                        h("strong", { text: d.channel }),
                        h("span", { class: "muted small", text: typeName(d.channel_type, typeNames[d.channel_type]) }),
                      ),
                    ),
                  ),
                  h("td", { dataset: { label: t("dlv.col.status") } }, statusBadge(d.status)),
                  h("td", { class: "num", dataset: { label: t("dlv.col.attempts") } }, String(d.attempts)),
                  h("td", { class: "cell-result", dataset: { label: t("dlv.col.detail") } }, resultCell(d)),
                  h(
                    "td",
                    { class: "cell-actions", dataset: { label: t("dlv.col.actions") } },
                    h(
                      "div",
                      { class: "row-actions" },
                      h(
                        "button",
                        { type: "button", class: "btn btn-sm btn-ghost", "aria-label": t("dlv.detailsFor", { id: d.id }), dataset: { focus: `details-${d.id}` }, onclick: () => openDelivery(d.id, load) },
                        icon("eye"),
                        h("span", { text: t("dlv.details") }),
                      ),
                      RESENDABLE.has(d.status)
                        ? h(
                            "button",
                            { type: "button", class: "btn btn-sm", "aria-label": t("dlv.resendFor", { id: d.id }), dataset: { focus: `resend-${d.id}` }, onclick: () => resend(d) },
                            icon("refresh"),
                            h("span", { text: t("dlv.resend") }),
                          )
                        : null,
                    ),
                  ),
                ),
              ),
            ),
          ),
        ),
      );
    }
    // pager
    fill(pager);
    if (cursor || page.next_cursor) {
      const newer = h("button", { type: "button", id: "dlv-newer", class: "btn", disabled: !cursor }, icon("back", "icon icon-sm"), h("span", { text: previous.length || !cursor ? t("dlv.newer") : t("dlv.first") }));
      newer.addEventListener("click", () => {
        const stack = [...previous];
        const back = stack.pop() || "";
        trail.set(key, stack);
        go(filters, back);
      });
      const older = h("button", { type: "button", id: "dlv-older", class: "btn", disabled: !page.next_cursor }, h("span", { text: t("dlv.older") }), icon("chevron", "icon icon-sm"));
      older.addEventListener("click", () => {
        trail.set(key, [...previous, cursor]);
        go(filters, page.next_cursor);
      });
      pager.append(newer, h("span", { class: "muted small", text: t("dlv.page", { n: previous.length + 1 }) }), older);
    }
    if (focusKey) {
      const again = host.querySelector(`[data-focus="${CSS.escape(focusKey)}"]`);
      if (again) again.focus();
    }
  }

  await load();
}

// -- one delivery ---------------------------------------------------------------------------

function attemptCard(a) {
  const outcome = a.outcome || "";
  const cls = outcome === "delivered" ? "ok" : outcome === "failed" ? "fail" : "warn";
  return h(
    "li",
    { class: `attempt attempt-${cls}` },
    h(
      "div",
      { class: "attempt-head" },
      h("strong", { text: t("dlv.attempt", { n: a.number }) }),
      h("span", { class: `pill pill-${cls}`, text: t(`outcome.${outcome}`) === `outcome.${outcome}` ? outcome : t(`outcome.${outcome}`) }),
      h("span", { class: "muted small mono", text: formatTime(a.started_at) }),
    ),
    a.diagnosis ? h("p", { class: "diagnosis", text: a.diagnosis }) : null,
    facts([
      [t("test.duration"), a.duration_ms !== null && a.duration_ms !== undefined ? t("common.ms", { n: a.duration_ms }) : null],
      [t("test.status"), a.status_code, "mono"],
      [t("test.vendorCode"), a.vendor_code, "mono"],
      [t("test.vendorMessage"), a.vendor_message],
      [t("dlv.nextAttempt", { when: "" }).trim(), a.next_attempt_at ? formatTime(a.next_attempt_at) : null, "mono"],
      [t("dlv.worker"), a.worker, "mono small"],
    ]),
    transcript(a.request),
  );
}

function deliveryBody(d, typeNames) {
  const m = d.message || {};
  return h(
    "div",
    { class: "delivery" },
    h("div", { class: "delivery-status" }, statusBadge(d.status), h("span", { class: "muted small" }, d.channel, " · ", typeName(d.channel_type, typeNames[d.channel_type]))),
    d.error ? h("p", { class: "callout callout-fail" }, icon("alert", "icon icon-sm"), h("span", { text: d.error })) : null,
    d.warning ? h("p", { class: "callout callout-warn" }, icon("alert", "icon icon-sm"), h("span", { text: d.warning })) : null,
    facts(
      [
        [t("dlv.deliveryId"), d.id, "mono small"],
        [t("dlv.messageId"), d.message_id, "mono small"],
        [t("dlv.created"), formatTime(d.created_at), "mono"],
        [t("dlv.delivered"), d.delivered_at ? formatTime(d.delivered_at) : null, "mono"],
        [t("dlv.nextAttempt", { when: "" }).trim(), d.next_attempt_at ? formatTime(d.next_attempt_at) : null, "mono"],
      ],
      "facts facts-grid",
    ),
    d.message
      ? h(
          "section",
          { class: "message-card", "aria-label": t("dlv.message") },
          h("h3", { text: t("dlv.message") }),
          m.title ? h("p", { class: "message-title", text: m.title }) : null,
          m.content ? h("pre", { class: "message-content", text: m.content }) : null,
          facts([
            [t("dlv.level"), m.level],
            [t("dlv.category"), m.category],
            [t("dlv.format"), m.format],
            [t("dlv.fields"), m.fields && Object.keys(m.fields).length ? Object.entries(m.fields).map(([k, v]) => `${k}: ${v}`).join(" · ") : null],
            [t("dlv.links"), Array.isArray(m.links) && m.links.length ? m.links.map((l) => l.title || l.url).join(" · ") : null],
          ]),
        )
      : null,
    h("h3", { text: t("dlv.attempts") }),
    d.attempt_log && d.attempt_log.length
      ? h("ol", { class: "attempts" }, [...d.attempt_log].reverse().map(attemptCard))
      : h("p", { class: "muted", text: t("dlv.noAttempts") }),
  );
}

/** The delivery's attempts in a dialog; Resend when it failed. `changed` refreshes the list. */
export function openDelivery(id, changed) {
  const resendButton = h("button", { type: "button", class: "btn btn-primary", hidden: true }, icon("refresh"), h("span", { text: t("dlv.resend") }));
  const closeButton = h("button", { type: "button", class: "btn", text: t("common.close") });
  const content = h("div", {}, loadingPanel());
  let timer = null;
  let open = true;
  const { close, dialog } = openDialog({
    title: `${t("dlv.detailTitle")} ${id}`,
    content,
    actions: [closeButton, resendButton],
    className: "dialog-wide drawer",
    onClose: () => {
      open = false;
      clearTimeout(timer);
      if (changed) changed();
    },
  });
  dialog.dataset.delivery = id;
  closeButton.addEventListener("click", () => close(false));

  async function load() {
    clearTimeout(timer);
    let d;
    let typeNames = {};
    try {
      d = await api.get(`/deliveries/${encodeURIComponent(id)}`);
      typeNames = Object.fromEntries((await loadTypes()).map((x) => [x.type, x.name]));
    } catch (error) {
      if (open) fill(content, errorPanel(error, load));
      return;
    }
    if (!open) return;
    const scroller = dialog.querySelector(".dialog-body");
    const top = scroller ? scroller.scrollTop : 0;
    const openDetails = [...content.querySelectorAll("details")].map((x) => x.open);
    fill(content, deliveryBody(d, typeNames));
    [...content.querySelectorAll("details")].forEach((x, i) => {
      if (openDetails[i]) x.open = true;
    });
    if (scroller) scroller.scrollTop = top;
    resendButton.hidden = !RESENDABLE.has(d.status);
    if (IN_FLIGHT.has(d.status)) timer = setTimeout(load, POLL_MS);
  }

  resendButton.addEventListener("click", async () => {
    resendButton.disabled = true;
    try {
      await api.post(`/deliveries/${encodeURIComponent(id)}/retry`, {});
      toast(t("dlv.resent", { id }));
    } catch (error) {
      toast(error.message, "error");
    }
    resendButton.disabled = false;
    closeButton.focus();
    await load();
  });

  load();
}
