// #/login: sign in (POST /console/session) and password recovery (authRecover).
import { anonymous, failure, sessionLogin, state, type ConsoleSession } from "../app";
import { field, h, passwordInput } from "../dom";

export function renderLogin(root: HTMLElement, done: (user: ConsoleSession) => void): void {
  const username = h("input", { id: "login-username", type: "text", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
  const pw = passwordInput("login-password", "login-show", { required: true });
  const error = h("p", { id: "login-error", class: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", id: "login-submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card narrow", id: "login-form", novalidate: true },
    h("h1", null, "Sign in to corral"),
    field("User name", username),
    h("div", { class: "field" }, h("label", { for: "login-password" }, "Password"), pw.wrap),
    error,
    h("div", { class: "buttons" }, submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    if (!username.value.trim() || !pw.input.value) {
      error.textContent = "Enter your user name and password.";
      return;
    }
    submit.disabled = true;
    try {
      const user = await sessionLogin(username.value.trim(), pw.input.value);
      done(user);
    } catch (err) {
      error.textContent = (await failure(err)).message;
      pw.input.focus();
    } finally {
      submit.disabled = false;
    }
  });

  // Forgot password: the server answers the same whether or not the user exists, and
  // says so when mail is not configured.
  const recName = h("input", { id: "recover-username", type: "text", autocomplete: "username", required: true });
  const recMsg = h("p", { id: "recover-message", role: "status" });
  const recSubmit = h("button", { type: "submit", id: "recover-submit", class: "secondary" }, "Send reset link");
  const recover = h(
    "form",
    { id: "recover-form", novalidate: true },
    field("User name", recName),
    recMsg,
    h("div", { class: "buttons" }, recSubmit),
  );
  recover.addEventListener("submit", async (e) => {
    e.preventDefault();
    recMsg.textContent = "";
    recMsg.className = "";
    if (!recName.value.trim()) {
      recMsg.textContent = "Enter your user name.";
      recMsg.className = "form-error";
      return;
    }
    recSubmit.disabled = true;
    try {
      const a = await anonymous.auth.authRecover({ recoverRequest: { username: recName.value.trim() } });
      recMsg.textContent = a.message;
    } catch (err) {
      recMsg.textContent = (await failure(err)).message;
      recMsg.className = "form-error";
    } finally {
      recSubmit.disabled = false;
    }
  });
  const details = h("section", { id: "forgot", class: "card narrow" }, h("h2", { id: "forgot-password" }, "Forgot password?"), recover);
  if (!username.value) setTimeout(() => username.focus(), 0);
  // Recovery is offered only when the server can mail the link.
  if (state.recovery) root.append(form, details);
  else root.append(form);
}
