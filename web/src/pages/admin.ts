// #/admin (administrators): users, your API tokens, settings (SMTP: S94, retention),
// the audit log and About.
import { SmtpSecurity, UserRole, type Settings, type TokenScope, type User } from "../../../sdk/typescript/src/index";
import { api, attempt, failure, isAdmin, state } from "../app";
import { confirmDialog, field, fmtTime, h, passwordInput, replace, table } from "../dom";
import * as v from "../validate";

export async function renderAdmin(root: HTMLElement): Promise<void> {
  if (!isAdmin()) {
    replace(root, h("section", { id: "not-found" }, h("h1", null, "Administrators only"), h("p", null, "not found")));
    return;
  }
  const usersSec = h("section", { id: "admin-users", class: "card" });
  const tokensSec = h("section", { id: "admin-tokens", class: "card" });
  const settingsSec = h("section", { id: "admin-settings", class: "card" });
  const auditSec = h("section", { id: "admin-audit", class: "card" });
  const aboutSec = h("section", { id: "admin-about", class: "card" });
  replace(root, h("div", null, h("h1", null, "Administration"), usersSec, tokensSec, settingsSec, auditSec, aboutSec));
  await Promise.all([users(usersSec), tokens(tokensSec), settings(settingsSec), audit(auditSec), about(aboutSec)]);
}

const roles = () => Object.values(UserRole).map((r) => h("option", { value: r }, r));

async function users(sec: HTMLElement): Promise<void> {
  const body = h("tbody");
  const load = async () => {
    const list = await api().users.userList();
    replace(body, list.map(row));
  };
  const row = (u: User) => {
    const role = h("select", { class: "user-role", "aria-label": `role of ${u.name}` }, roles());
    role.value = u.role;
    role.addEventListener("change", async () => {
      const r = await attempt(() => api().users.userUpdate({ id: u.id, userChange: { role: role.value as UserRole } }));
      if (!r) role.value = u.role;
    });
    const del = h("button", { type: "button", class: "danger small delete-user" }, "Delete");
    del.disabled = u.name === state.user?.username;
    del.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete user ${u.name}?`, "Delete"))) return;
      const ok = await attempt(() => api().users.userDelete({ id: u.id }));
      if (ok !== undefined) await attempt(load);
    });
    return h("tr", { dataset: { userId: u.id, user: u.name } }, h("td", null, u.name), h("td", null, role), h("td", null, u.email ?? ""), h("td", null, fmtTime(u.createdAt)), h("td", null, del));
  };
  const name = h("input", { id: "user-name-new", type: "text", maxlength: 64 });
  const email = h("input", { id: "user-email", type: "email" });
  const pw = passwordInput("user-password", "user-password-show", { autocomplete: "new-password" });
  const gen = h("button", { type: "button", id: "user-generate-password", class: "secondary small" }, "generate");
  gen.addEventListener("click", () => {
    pw.input.value = v.randomPassword();
    pw.input.type = "text";
  });
  const role = h("select", { id: "user-role" }, roles());
  role.value = "user";
  const err = h("p", { id: "user-error", class: "form-error", role: "alert" });
  const form = h(
    "form",
    { id: "user-form", novalidate: true },
    h("h3", null, "New user"),
    field("Name", name),
    field("Email (optional)", email),
    h("div", { class: "field" }, h("label", { for: "user-password" }, "Password"), h("span", { class: "password" }, pw.wrap, gen), h("span", { class: "field-error", dataset: { for: "user-password" } })),
    field("Role", role),
    err,
    h("button", { type: "submit", id: "user-create" }, "Create user"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    const ok = [
      v.mark(form, "user-name-new", v.userName(name.value.trim())),
      v.mark(form, "user-email", email.value && !/^[^@\s]+@[^@\s]+$/.test(email.value) ? "Enter a mail address." : null),
      v.mark(form, "user-password", v.password(pw.input.value, true)),
    ].every((x) => x);
    if (!ok) return;
    try {
      await api().users.userCreate({ newUser: { name: name.value.trim(), email: email.value || undefined, password: pw.input.value, role: role.value as UserRole } });
      form.reset();
      await attempt(load);
    } catch (e2) {
      err.textContent = (await failure(e2)).message;
    }
  });
  replace(sec, h("h2", null, "Users"), table("users-table", ["Name", "Role", "Email", "Created", ""], body), form);
  await attempt(load);
}

async function tokens(sec: HTMLElement): Promise<void> {
  const body = h("tbody");
  const created = h("div", { id: "token-created", role: "status" });
  const load = async () => {
    const list = await api().auth.tokenList();
    replace(
      body,
      list.length
        ? list.map((t) => {
            const rev = h("button", { type: "button", class: "danger small revoke-token" }, "Revoke");
            rev.disabled = t.current;
            rev.addEventListener("click", async () => {
              if (!(await confirmDialog(`Revoke token ${t.name}?`, "Revoke"))) return;
              const ok = await attempt(() => api().auth.tokenRevoke({ id: t.id }));
              if (ok !== undefined) await attempt(load);
            });
            return h("tr", { dataset: { tokenId: t.id } }, h("td", null, t.name, t.current ? " (this session)" : ""), h("td", null, t.scope), h("td", null, fmtTime(t.createdAt)), h("td", null, t.expiresAt ? fmtTime(t.expiresAt) : "never"), h("td", null, rev));
          })
        : h("tr", null, h("td", { colspan: 5 }, "No tokens.")),
    );
  };
  const name = h("input", { id: "token-name", type: "text", maxlength: 64 });
  const days = h("input", { id: "token-days", type: "number", min: 1, max: 366, placeholder: "site maximum" });
  const scope = h("select", { id: "token-scope" }, h("option", { value: "api" }, "api"), h("option", { value: "metrics" }, "metrics (scrape only)"));
  const form = h("form", { id: "token-form", class: "filters", novalidate: true }, field("Name", name), field("Expires in (days)", days), field("Scope", scope), h("button", { type: "submit", id: "token-create" }, "Create token"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const ok = [
      v.mark(form, "token-name", name.value.trim() ? (name.value.length > 64 ? "At most 64 characters." : null) : "Enter a name."),
      v.mark(form, "token-days", days.value ? v.intIn(days.value, 1, 366, "days") : null),
    ].every((x) => x);
    if (!ok) return;
    const t = await attempt(() => api().auth.tokenCreate({ newToken: { name: name.value.trim(), scope: scope.value as TokenScope, expiresInSecs: days.value ? Number(days.value) * 86400 : undefined } }));
    if (t) {
      replace(created, h("p", null, "Copy this token now; it is not shown again: "), h("pre", { id: "token-value" }, t.token));
      form.reset();
      await attempt(load);
    }
  });
  replace(sec, h("h2", null, "Your API tokens"), table("tokens-table", ["Name", "Scope", "Created", "Expires", ""], body), form, created);
  await attempt(load);
}

async function settings(sec: HTMLElement): Promise<void> {
  let s: Settings;
  try {
    s = await api().system.settingsGet();
  } catch (e) {
    replace(sec, h("h2", null, "Settings"), h("p", { class: "bad" }, (await failure(e)).message));
    return;
  }
  const host = h("input", { id: "smtp-host", type: "text", value: s.smtp.host });
  const port = h("input", { id: "smtp-port", type: "number", min: 1, max: 65535, value: s.smtp.port });
  const security = h("select", { id: "smtp-security" }, Object.values(SmtpSecurity).map((x) => h("option", { value: x }, x)));
  security.value = s.smtp.security;
  const from = h("input", { id: "smtp-from", type: "email", value: s.smtp.from });
  const user = h("input", { id: "smtp-username", type: "text", value: s.smtp.username ?? "", autocomplete: "off" });
  const pw = passwordInput("smtp-password", "smtp-password-show", { autocomplete: "new-password", placeholder: s.smtp.passwordSet ? "(stored; leave empty to keep)" : "" });
  const resetUrl = h("input", { id: "smtp-reset-url", type: "url", value: s.smtp.resetUrl ?? "" });
  const r = s.retention;
  const num = (id: string, val: number | undefined, min: number, max: number) => h("input", { id, type: "number", min, max, value: val ?? "" });
  const audit = num("retention-audit-days", r.auditDays, 1, 36600);
  const events = num("retention-events-days", r.eventsDays, 1, 36600);
  const ops = num("retention-operations-days", r.operationsDays, 1, 36600);
  const mDays = num("retention-metrics-days", r.metricsDays, 1, 3660);
  const mRaw = num("retention-metrics-raw-hours", r.metricsRawHours, 1, 744);
  const msg = h("p", { id: "settings-message", role: "status" });
  const form = h(
    "form",
    { id: "settings-form", novalidate: true },
    h("h3", null, "Mail (SMTP), for password recovery"),
    field("Host (empty: mail off)", host),
    field("Port", port),
    field("Security", security),
    field("From", from),
    field("User name", user),
    h("div", { class: "field" }, h("label", { for: "smtp-password" }, "Password"), pw.wrap),
    field("Reset link URL (optional)", resetUrl),
    h("h3", null, "Retention"),
    field("Audit trail (days)", audit),
    field("Event log (days)", events),
    field("Finished operations (days)", ops),
    field("Metric rollups (days)", mDays, "1–3660"),
    field("Raw metric samples (hours)", mRaw, "1–744"),
    msg,
    h("button", { type: "submit", id: "settings-save" }, "Save settings"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    msg.className = "";
    const ok = [
      v.mark(form, "smtp-port", v.intIn(port.value, 1, 65535, "a port")),
      v.mark(form, "smtp-from", host.value.trim() && !/^[^@\s]+@[^@\s]+$/.test(from.value) ? "A sender address is required with a host." : null),
      v.mark(form, "retention-audit-days", v.intIn(audit.value, 1, 36600, "days")),
      v.mark(form, "retention-events-days", v.intIn(events.value, 1, 36600, "days")),
      v.mark(form, "retention-operations-days", v.intIn(ops.value, 1, 36600, "days")),
      v.mark(form, "retention-metrics-days", mDays.value ? v.intIn(mDays.value, 1, 3660, "days") : null),
      v.mark(form, "retention-metrics-raw-hours", mRaw.value ? v.intIn(mRaw.value, 1, 744, "hours") : null),
    ].every((x) => x);
    if (!ok) return;
    try {
      s = await api().system.settingsUpdate({
        settingsChange: {
          smtp: {
            host: host.value.trim(),
            port: Number(port.value),
            security: security.value as SmtpSecurity,
            from: from.value.trim() || undefined,
            username: user.value.trim() || undefined,
            password: pw.input.value || undefined,
            resetUrl: resetUrl.value.trim() || undefined,
          },
          retention: {
            auditDays: Number(audit.value),
            eventsDays: Number(events.value),
            operationsDays: Number(ops.value),
            metricsDays: mDays.value ? Number(mDays.value) : undefined,
            metricsRawHours: mRaw.value ? Number(mRaw.value) : undefined,
          },
        },
      });
      pw.input.value = "";
      pw.input.placeholder = s.smtp.passwordSet ? "(stored; leave empty to keep)" : "";
      msg.textContent = "saved";
      msg.className = "ok";
    } catch (e2) {
      msg.textContent = (await failure(e2)).message;
      msg.className = "form-error";
    }
  });
  replace(sec, h("h2", null, "Settings"), form);
}

async function audit(sec: HTMLElement): Promise<void> {
  const body = h("tbody");
  const fUser = h("input", { id: "audit-user", type: "text" });
  const fAction = h("input", { id: "audit-action", type: "text", placeholder: "guest_create" });
  const fObject = h("input", { id: "audit-object", type: "text" });
  const more = h("button", { type: "button", id: "audit-more", class: "secondary" }, "Older");
  let before: number | undefined;
  const load = async (append: boolean) => {
    const list = await api().system.auditList({ user: fUser.value.trim() || undefined, action: fAction.value.trim() || undefined, object: fObject.value.trim() || undefined, before: append ? before : undefined, limit: 100 });
    const rows = list.map((a) =>
      h("tr", { dataset: { seq: a.seq } }, h("td", null, fmtTime(a.at)), h("td", null, a.user ?? ""), h("td", null, a.action), h("td", null, `${a.method} ${a.path}`), h("td", null, a.object ?? ""), h("td", null, String(a.status)), h("td", null, a.address)),
    );
    if (append) body.append(...rows);
    else replace(body, rows.length ? rows : h("tr", null, h("td", { colspan: 7 }, "Nothing.")));
    if (list.length) before = list[list.length - 1].seq;
    more.hidden = list.length < 100;
  };
  const form = h("form", { id: "audit-filters", class: "filters", role: "search" }, h("label", { for: "audit-user" }, "User"), fUser, h("label", { for: "audit-action" }, "Action"), fAction, h("label", { for: "audit-object" }, "Object"), fObject, h("button", { type: "submit", class: "secondary" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void attempt(() => load(false));
  });
  more.addEventListener("click", () => void attempt(() => load(true)));
  replace(sec, h("h2", null, "Audit log"), form, table("audit-table", ["When", "User", "Action", "Request", "Object", "Status", "From"], body), more);
  await attempt(() => load(false));
}

async function about(sec: HTMLElement): Promise<void> {
  try {
    const a = await api().system.about();
    replace(sec, h("h2", null, "About"), h("p", { id: "about-version" }, `${a.name} ${a.version}`), h("details", null, h("summary", null, "Operation kinds"), h("ul", null, a.operationKinds.map((k) => h("li", null, k)))));
  } catch (e) {
    replace(sec, h("h2", null, "About"), h("p", { class: "bad" }, (await failure(e)).message));
  }
}
