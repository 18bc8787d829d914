// Entry point: the shell (header, nav, theme, error area) and the hash router.
import {
  clearError,
  isAdmin,
  leavePage,
  sessionGet,
  sessionLogout,
  setUnauthorizedHandler,
  showError,
  signIn,
  signOut,
  startEvents,
  state,
} from "./app";
import { h, replace } from "./dom";
import { renderLogin } from "./pages/login";
import { renderGuests } from "./pages/guests";
import { renderCreate } from "./pages/create";
import { renderGuest } from "./pages/guest";
import { renderPools, renderPool } from "./pages/pools";
import { renderNodes, renderNode } from "./pages/nodes";
import { renderTemplates } from "./pages/templates";
import { renderScripts } from "./pages/scripts";
import { renderDashboard } from "./pages/dashboard";
import { renderAdmin } from "./pages/admin";

type Page = (root: HTMLElement, ...params: string[]) => void | Promise<void>;

const routes: [RegExp, Page][] = [
  [/^\/$/, renderDashboard],
  [/^\/guests$/, renderGuests],
  [/^\/guests\/new$/, renderCreate],
  [/^\/guests\/([^/]+)$/, renderGuest],
  [/^\/pools$/, renderPools],
  [/^\/pools\/([^/]+)$/, renderPool],
  [/^\/nodes$/, renderNodes],
  [/^\/nodes\/([^/]+)$/, renderNode],
  [/^\/templates$/, renderTemplates],
  [/^\/scripts$/, renderScripts],
  [/^\/admin$/, renderAdmin],
];

// ---- theme: prefers-color-scheme unless toggled (remembered) ----

const THEME_KEY = "corral.theme";

function effectiveTheme(): "dark" | "light" {
  const saved = localStorage.getItem(THEME_KEY);
  if (saved === "dark" || saved === "light") return saved;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function applyTheme(): void {
  const t = effectiveTheme();
  document.documentElement.dataset.theme = t;
  const b = document.getElementById("theme-toggle");
  if (b) {
    b.textContent = t === "dark" ? "light theme" : "dark theme";
    b.setAttribute("aria-pressed", String(t === "dark"));
  }
}

// ---- shell ----

const app = document.getElementById("app") as HTMLElement;
let main: HTMLElement;

function navLink(href: string, label: string): HTMLElement {
  return h("li", null, h("a", { href, dataset: { nav: href } }, label));
}

function buildShell(): void {
  const user = state.user;
  const menu = h("button", { type: "button", id: "nav-toggle", class: "secondary", "aria-expanded": "false", "aria-controls": "nav" }, "menu");
  const nav = h(
    "nav",
    { id: "nav", "aria-label": "main" },
    h(
      "ul",
      null,
      user
        ? [
            navLink("#/", "Dashboard"),
            navLink("#/guests", "Guests"),
            navLink("#/pools", "IP pools"),
            navLink("#/nodes", "Nodes"),
            navLink("#/templates", "Templates"),
            navLink("#/scripts", "Scripts"),
            isAdmin() ? navLink("#/admin", "Admin") : null,
          ]
        : null,
    ),
  );
  menu.addEventListener("click", () => {
    const open = !nav.classList.contains("open");
    nav.classList.toggle("open", open);
    menu.setAttribute("aria-expanded", String(open));
  });
  nav.addEventListener("click", (e) => {
    if ((e.target as HTMLElement).tagName === "A") {
      nav.classList.remove("open");
      menu.setAttribute("aria-expanded", "false");
    }
  });
  const theme = h("button", { type: "button", id: "theme-toggle", class: "secondary" }, "theme");
  theme.addEventListener("click", () => {
    localStorage.setItem(THEME_KEY, effectiveTheme() === "dark" ? "light" : "dark");
    applyTheme();
  });
  const logout = user ? h("button", { type: "button", id: "logout", class: "secondary" }, "Log out") : null;
  logout?.addEventListener("click", async () => {
    try {
      await sessionLogout();
    } catch (e) {
      await showError(e);
    }
    signOut();
    buildShell();
    location.hash = "#/login";
  });
  main = h("main", { id: "main", tabindex: "-1" });
  replace(
    app,
    h("a", { href: "#main", class: "skip" }, "Skip to content"),
    h(
      "header",
      { class: "top" },
      h("a", { href: "#/", class: "brand" }, "corral"),
      user ? menu : null,
      nav,
      h(
        "div",
        { class: "who" },
        user ? h("span", { id: "user-name", title: `role: ${user.role}` }, user.username) : null,
        user ? h("span", { class: "role" }, user.role) : null,
        theme,
        logout,
      ),
    ),
    h("div", { id: "error", role: "alert", class: "error-banner", hidden: true }),
    main,
  );
  applyTheme();
}

let navSeq = 0;

async function route(): Promise<void> {
  const seq = ++navSeq;
  leavePage();
  clearError();
  const path = (location.hash.replace(/^#/, "") || "/").split("?")[0];
  if (!state.user) {
    if (path !== "/login") {
      sessionStorage.setItem("corral.next", location.hash || "#/");
      location.hash = "#/login";
      return;
    }
    replace(main);
    renderLogin(main, async (user) => {
      signIn(user);
      startEvents();
      buildShell();
      const next = sessionStorage.getItem("corral.next");
      sessionStorage.removeItem("corral.next");
      const target = next && next !== "#/login" ? next : "#/";
      if (location.hash === target) void route();
      else location.hash = target;
    });
    return;
  }
  if (path === "/login") {
    location.hash = "#/";
    return;
  }
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    const href = a.dataset.nav ?? "";
    const active = href === "#/" ? path === "/" : path === href.slice(1) || path.startsWith(href.slice(1) + "/");
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  replace(main);
  for (const [re, page] of routes) {
    const m = re.exec(path);
    if (m) {
      try {
        await page(main, ...m.slice(1).map(decodeURIComponent));
      } catch (e) {
        if (seq === navSeq) await showError(e);
      }
      return;
    }
  }
  replace(main, h("section", { id: "not-found" }, h("h1", null, "Page not found"), h("p", null, "not found: ", path)));
}

async function boot(): Promise<void> {
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
  setUnauthorizedHandler(() => {
    signOut();
    buildShell();
    sessionStorage.setItem("corral.next", location.hash || "#/");
    location.hash = "#/login";
  });
  let user = null;
  try {
    user = await sessionGet();
  } catch (e) {
    buildShell();
    await showError(e);
  }
  if (user) {
    signIn(user);
    startEvents();
  }
  buildShell();
  window.addEventListener("hashchange", () => void route());
  await route();
}

void boot();
