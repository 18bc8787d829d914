// The console's shared state: the browser session (cookie + CSRF token), the SDK clients
// built on it, the signed-in user, the global error area and the one event stream.
import {
  AuthApi,
  GuestsApi,
  MetricsApi,
  NodesApi,
  OperationsApi,
  ResourcesApi,
  ScriptsApi,
  SystemApi,
  UsersApi,
  ResponseError,
  Configuration,
} from "../../sdk/typescript/src/index";
import type { EventItem } from "../../sdk/typescript/src/index";
import { Session } from "../../sdk/typescript/src/session";

export const API_BASE = "/api/v1";

/** The answer of `/console/session` (not part of the API). */
export interface ConsoleSession {
  csrf: string;
  username: string;
  role: "user" | "operator" | "admin";
}

export interface Apis {
  auth: AuthApi;
  guests: GuestsApi;
  metrics: MetricsApi;
  nodes: NodesApi;
  ops: OperationsApi;
  res: ResourcesApi;
  scripts: ScriptsApi;
  system: SystemApi;
  users: UsersApi;
}

function apisFor(config: Configuration): Apis {
  return {
    auth: new AuthApi(config),
    guests: new GuestsApi(config),
    metrics: new MetricsApi(config),
    nodes: new NodesApi(config),
    ops: new OperationsApi(config),
    res: new ResourcesApi(config),
    scripts: new ScriptsApi(config),
    system: new SystemApi(config),
    users: new UsersApi(config),
  };
}

/** Clients for the calls made before signing in (password recovery). */
export const anonymous: Apis = apisFor(new Configuration({ basePath: API_BASE, credentials: "same-origin" }));

export const state: {
  user: ConsoleSession | null;
  session: Session | null;
  api: Apis;
  /** Whether the server can mail a reset link (told with the 401 of `/console/session`). */
  recovery: boolean;
} = { user: null, session: null, api: anonymous, recovery: false };

export function api(): Apis {
  return state.api;
}

export function isAdmin(): boolean {
  return state.user?.role === "admin";
}

export function isOperator(): boolean {
  return state.user?.role === "admin" || state.user?.role === "operator";
}

// ---- console session (cookie) ----

export class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly code?: string, readonly details?: unknown) {
    super(message);
  }
}

async function bodyError(resp: Response): Promise<HttpError> {
  let message = `${resp.status} ${resp.statusText}`;
  let code: string | undefined;
  let details: unknown;
  try {
    const b = await resp.clone().json();
    if (b && typeof b.message === "string") message = b.message;
    code = b?.code;
    details = b?.details;
  } catch {
    /* not JSON */
  }
  return new HttpError(resp.status, message, code, details);
}

export async function sessionGet(): Promise<ConsoleSession | null> {
  const resp = await fetch("/console/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (resp.status === 401) {
    const e = await bodyError(resp);
    state.recovery = (e.details as { recovery?: boolean } | undefined)?.recovery === true;
    return null;
  }
  if (!resp.ok) throw await bodyError(resp);
  return (await resp.json()) as ConsoleSession;
}

export async function sessionLogin(username: string, password: string): Promise<ConsoleSession> {
  const resp = await fetch("/console/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!resp.ok) throw await bodyError(resp);
  return (await resp.json()) as ConsoleSession;
}

export async function sessionLogout(): Promise<void> {
  const csrf = state.user?.csrf ?? "";
  await fetch("/console/session", { method: "DELETE", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
}

export function signIn(user: ConsoleSession): void {
  state.user = user;
  state.session = Session.browser(API_BASE, user.csrf);
  state.api = apisFor(state.session.config);
}

export function signOut(): void {
  stopEvents();
  state.user = null;
  state.session = null;
  state.api = anonymous;
}

// ---- errors ----

export interface ApiFailure {
  status: number;
  code?: string;
  message: string;
  details?: unknown;
}

/** The API error body `{code, message, details}` of any failure, as one shape. */
export async function failure(e: unknown): Promise<ApiFailure> {
  if (e instanceof HttpError) return { status: e.status, code: e.code, message: e.message, details: e.details };
  if (e instanceof ResponseError) {
    const r = e.response;
    try {
      const b = await r.clone().json();
      return { status: r.status, code: b?.code, message: String(b?.message ?? `${r.status} ${r.statusText}`), details: b?.details };
    } catch {
      return { status: r.status, message: `${r.status} ${r.statusText}` };
    }
  }
  if (e instanceof Error) return { status: 0, message: e.message };
  return { status: 0, message: String(e) };
}

let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f;
}

/** Shows the API error's message in the global `#error` area. */
export async function showError(e: unknown): Promise<ApiFailure> {
  const f = await failure(e);
  if (f.status === 401 && state.user) {
    onUnauthorized();
  }
  const el = document.getElementById("error");
  if (el) {
    el.replaceChildren();
    const msg = document.createElement("span");
    msg.textContent = f.message;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "secondary small";
    close.textContent = "dismiss";
    close.setAttribute("aria-label", "dismiss error");
    close.addEventListener("click", () => clearError());
    el.append(msg, close);
    el.hidden = false;
  }
  return f;
}

export function clearError(): void {
  const el = document.getElementById("error");
  if (el) {
    el.replaceChildren();
    el.hidden = true;
  }
}

/** Runs `f`, showing any failure in `#error`; returns undefined on failure. */
export async function attempt<T>(f: () => Promise<T>): Promise<T | undefined> {
  try {
    return await f();
  } catch (e) {
    await showError(e);
    return undefined;
  }
}

// ---- events: one stream for the whole app ----

type Listener = (ev: EventItem) => void;
const listeners = new Set<{ kinds: string[] | null; f: Listener }>();
let events: AbortController | null = null;

/** Subscribes to events of these kinds (null: all); returns the unsubscribe function. */
export function on(kinds: string[] | null, f: Listener): () => void {
  const entry = { kinds, f };
  listeners.add(entry);
  return () => {
    listeners.delete(entry);
  };
}

export function startEvents(): void {
  if (events || !state.session) return;
  const ctl = new AbortController();
  events = ctl;
  const session = state.session;
  void (async () => {
    let after: number | undefined;
    while (!ctl.signal.aborted) {
      try {
        for await (const ev of session.events(after, ctl.signal)) {
          after = ev.seq;
          for (const l of [...listeners]) {
            if (l.kinds === null || l.kinds.includes(ev.kind)) {
              try {
                l.f(ev);
              } catch (err) {
                console.error("event listener", err);
              }
            }
          }
        }
      } catch {
        if (ctl.signal.aborted) return;
      }
      // Stream refused or dropped: try again shortly (the cookie may have expired).
      await new Promise((r) => setTimeout(r, 3000));
    }
  })();
}

export function stopEvents(): void {
  events?.abort();
  events = null;
}

// A page left for another keeps no stream open: a browser allows six connections per
// host over HTTP/1.1, and a page kept in the back/forward cache would hold one each.
window.addEventListener("pagehide", () => stopEvents());
window.addEventListener("pageshow", (e: PageTransitionEvent) => {
  if (e.persisted) startEvents();
});

// ---- page scope: what a page set up ends when the route changes ----

let cleanups: (() => void)[] = [];

/** Registers something to undo when the current page is left. */
export function onLeave(f: () => void): void {
  cleanups.push(f);
}

/** `on`, ended automatically when the current page is left. */
export function onPage(kinds: string[] | null, f: Listener): () => void {
  const off = on(kinds, f);
  cleanups.push(off);
  return off;
}

export function leavePage(): void {
  const cs = cleanups;
  cleanups = [];
  for (const c of cs) {
    try {
      c();
    } catch (e) {
      console.error("cleanup", e);
    }
  }
}
