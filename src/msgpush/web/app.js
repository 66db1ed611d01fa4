// msgpush console: sign-in, the shell (System Management > Message Push), hash routing.

import { api, setToken, token, whenUnauthorized } from "./api.js";
import { channelsPage, createPage, editPage, typePickerPage } from "./channels.js";
import { deliveriesPage } from "./deliveries.js";
import { ruleCreatePage, ruleEditPage, rulesPage } from "./rules.js";
import { fill, h, icon, toastRegion, uid } from "./dom.js";
import { lang, setLang, t } from "./i18n.js";
import { errorPanel, forgetTypes, loadingPanel, pageHead } from "./ui.js";

const root = document.getElementById("app");

const ROUTES = [
  { pattern: /^\/channels$/, nav: "channels", title: "nav.channels", page: (ctx) => channelsPage(ctx) },
  { pattern: /^\/channels\/new$/, nav: "channels", title: "create.title", page: (ctx) => typePickerPage(ctx) },
  { pattern: /^\/channels\/new\/([^/]+)$/, nav: "channels", title: "create.title", page: (ctx, m) => createPage(ctx, decodeURIComponent(m[1])) },
  { pattern: /^\/channels\/([^/]+)\/edit$/, nav: "channels", title: "edit.title", page: (ctx, m) => editPage(ctx, decodeURIComponent(m[1])) },
  { pattern: /^\/deliveries$/, nav: "deliveries", title: "nav.deliveries", page: (ctx) => deliveriesPage(ctx) },
  { pattern: /^\/rules$/, nav: "rules", title: "nav.rules", page: (ctx) => rulesPage(ctx) },
  { pattern: /^\/rules\/new$/, nav: "rules", title: "rules.newTitle", page: (ctx) => ruleCreatePage(ctx) },
  { pattern: /^\/rules\/([^/]+)\/edit$/, nav: "rules", title: "rules.editTitle", page: (ctx, m) => ruleEditPage(ctx, decodeURIComponent(m[1])) },
];

let sequence = 0;
let keepFocusOnce = false;
let shell = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/channels";
  const [path, search] = raw.split("?");
  return { path: path || "/channels", query: new URLSearchParams(search || "") };
}

function navigate(hash, { keepFocus = false } = {}) {
  if (location.hash === hash) {
    render();
    return;
  }
  keepFocusOnce = keepFocus;
  location.hash = hash;
}

// -- header pieces ----------------------------------------------------------------------------

function langButton() {
  return h(
    "button",
    {
      type: "button",
      id: "lang-toggle",
      class: "btn btn-ghost btn-sm lang-toggle",
      lang: lang() === "zh" ? "en" : "zh",
      "aria-label": t("lang.switchLabel"),
      onclick: () => {
        setLang(lang() === "zh" ? "en" : "zh");
        shell = null;
        keepFocusOnce = true;
        render().then(() => document.getElementById("lang-toggle")?.focus());
      },
    },
    icon("globe", "icon icon-sm"),
    h("span", { text: t("lang.switch") }),
  );
}

function brand() {
  return h("span", { class: "brand" }, h("span", { class: "brand-mark", "aria-hidden": "true" }, icon("logo")), h("span", { class: "brand-name", text: t("app.name") }));
}

// -- sign-in ----------------------------------------------------------------------------------

function renderLogin(notice) {
  shell = null;
  sequence += 1;
  document.title = `${t("login.title")} · msgpush`;
  const inputId = uid("token");
  const helpId = uid("help");
  const errorId = uid("err");
  const input = h("input", {
    id: inputId,
    name: "token",
    class: "input",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": `${helpId} ${errorId}`,
  });
  const error = h("p", { id: errorId, class: "field-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary btn-block" }, h("span", { text: t("login.submit") }));
  const showError = (message) => {
    fill(error, icon("alert", "icon icon-sm"), h("span", { text: message }));
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  };
  const form = h(
    "form",
    { class: "login-form", novalidate: true },
    notice ? h("p", { class: "notice", role: "status", text: notice }) : null,
    h("div", { class: "field" }, h("label", { class: "label", for: inputId, text: t("login.token") }), input, h("p", { class: "help", id: helpId, text: t("login.tokenHelp") }), error),
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return showError(t("login.empty"));
    submit.disabled = true;
    submit.firstChild.textContent = t("login.checking");
    try {
      await api.get("/channels?limit=1", { auth: value, quiet401: true });
      setToken(value);
      forgetTypes();
      if (!location.hash || location.hash === "#/" || location.hash === "#") location.hash = "#/channels";
      await render();
    } catch (err) {
      submit.disabled = false;
      submit.firstChild.textContent = t("login.submit");
      if (err.status === 401) showError(t("login.invalid"));
      else if (err.status === 403) showError(t("login.sender"));
      else showError(err.message);
    }
  });
  document.body.classList.add("is-login");
  fill(root, 
    h(
      "div",
      { class: "login-page" },
      h("div", { class: "login-top" }, langButton()),
      h(
        "main",
        { class: "login-card", id: "main" },
        h("div", { class: "login-brand" }, brand(), h("span", { class: "muted", text: t("app.tagline") })),
        h("h1", { text: t("login.title") }),
        h("p", { class: "muted", text: t("login.intro") }),
        form,
      ),
    ),
  );
  input.focus();
}

whenUnauthorized(() => {
  setToken(null);
  renderLogin(t("login.expired"));
});

// -- the shell ----------------------------------------------------------------------------------

function buildShell() {
  document.body.classList.remove("is-login");
  const crumb = h("li", { "aria-current": "page" });
  const navLink = (key, href, iconName, label, extra) =>
    h("li", {}, h("a", { class: "nav-link", href, dataset: { nav: key } }, icon(iconName), h("span", { text: label }), extra));
  const main = h("main", { id: "main", class: "main", tabindex: "-1" });
  const skip = h("a", { class: "skip-link", href: "#main", text: t("skip") });
  skip.addEventListener("click", (event) => {
    event.preventDefault();
    (main.querySelector("h1") || main).focus();
  });
  const logout = h("button", { type: "button", class: "btn btn-ghost btn-sm", onclick: () => {
    setToken(null);
    forgetTypes();
    renderLogin(t("login.loggedOut"));
  } }, icon("logout", "icon icon-sm"), h("span", { class: "hide-narrow", text: t("logout") }));
  logout.setAttribute("aria-label", t("logout"));
  fill(root, 
    skip,
    h(
      "header",
      { class: "topbar" },
      brand(),
      h("nav", { class: "crumbs", "aria-label": t("nav.breadcrumb") }, h("ol", {}, h("li", { text: t("nav.system") }), h("li", { text: t("nav.push") }), crumb)),
      h("div", { class: "top-actions" }, langButton(), logout),
    ),
    h(
      "div",
      { class: "layout" },
      h(
        "nav",
        { class: "sidebar", "aria-label": t("nav.main") },
        h("p", { class: "nav-group", text: t("nav.system") }),
        h("p", { class: "nav-parent" }, icon("send"), h("span", { text: t("nav.push") })),
        h(
          "ul",
          { class: "nav-list" },
          navLink("channels", "#/channels", "channels", t("nav.channels")),
          navLink("deliveries", "#/deliveries", "history", t("nav.deliveries")),
          navLink("rules", "#/rules", "rules", t("nav.rules")),
        ),
      ),
      main,
    ),
  );
  return { main, crumb };
}

// -- rendering a route ------------------------------------------------------------------------------

async function render() {
  sequence += 1;
  const mine = sequence;
  if (!token()) {
    renderLogin();
    return;
  }
  const { path, query } = parseHash();
  let route = null;
  let match = null;
  for (const candidate of ROUTES) {
    match = path.match(candidate.pattern);
    if (match) {
      route = candidate;
      break;
    }
  }
  if (!route) {
    location.replace("#/channels");
    return;
  }
  if (!shell) shell = buildShell();
  const { main, crumb } = shell;
  crumb.textContent = t(route.nav === "channels" ? "nav.channels" : route.nav === "deliveries" ? "nav.deliveries" : "nav.rules");
  for (const link of document.querySelectorAll(".nav-link")) {
    if (link.dataset.nav === route.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${t(route.title)} · ${t("nav.push")} · msgpush`;
  const moveFocus = !keepFocusOnce;
  keepFocusOnce = false;
  const focused = document.activeElement;
  const focusedId = focused && focused.id;
  fill(main, loadingPanel());
  const ctx = { main, query, isCurrent: () => mine === sequence, navigate };
  try {
    await route.page(ctx, match);
  } catch (error) {
    if (mine !== sequence) return;
    if (error.status === 401) return;
    fill(main, pageHead({ title: t(route.title) }), errorPanel(error, () => render()));
  }
  if (mine !== sequence) return;
  if (moveFocus) {
    const heading = main.querySelector("h1");
    if (heading) heading.focus({ preventScroll: false });
    window.scrollTo(0, 0);
  } else if (focusedId && document.getElementById(focusedId)) {
    document.getElementById(focusedId).focus();
  }
}

toastRegion();
window.addEventListener("hashchange", () => render());
render();
