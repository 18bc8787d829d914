// #/guests/new: the create form, validated before sending (S34), a password generator
// (S46), batches (`count`) and a progress bar per created guest.
import type { AcceptedList, Pool, Template } from "../../../sdk/typescript/src/index";
import { api, failure, onPage } from "../app";
import { field, h, passwordInput, replace } from "../dom";
import { opProgress } from "../progress";
import * as v from "../validate";
import { nodeNames } from "./guests";

/** Which form field a server message names, if any. */
const FIELD_WORDS: [RegExp, string][] = [
  [/\bmemory(_mib)?\b/i, "create-memory"],
  [/\bcpus?\b/i, "create-cpus"],
  [/\btemplate\b/i, "create-template"],
  [/\bpool\b/i, "create-pool"],
  [/\bnode\b/i, "create-node"],
  [/\bpassword\b/i, "create-password"],
  [/\bcount\b/i, "create-count"],
  [/\btags?\b/i, "create-tags"],
  [/\bname\b/i, "create-name"],
];

export async function renderCreate(root: HTMLElement): Promise<void> {
  const name = h("input", { id: "create-name", type: "text", autocomplete: "off", spellcheck: "false", maxlength: 63 });
  const template = h("select", { id: "create-template", required: true }, h("option", { value: "" }, "choose a template"));
  const cpus = h("input", { id: "create-cpus", type: "number", min: 1, max: 64, step: 1, value: 1, inputmode: "numeric" });
  const memory = h("input", { id: "create-memory", type: "number", min: 64, max: 1048576, step: 1, value: 1024, inputmode: "numeric" });
  const pool = h("select", { id: "create-pool" }, h("option", { value: "" }, "automatic (first pool with a free address)"));
  const node = h("select", { id: "create-node" }, h("option", { value: "" }, "automatic"));
  const pw = passwordInput("create-password", "create-password-show", { autocomplete: "new-password" });
  const gen = h("button", { type: "button", id: "create-generate-password", class: "secondary small" }, "generate");
  const count = h("input", { id: "create-count", type: "number", min: 1, max: 100, step: 1, value: 1, inputmode: "numeric" });
  const tagsIn = h("input", { id: "create-tags", type: "text", placeholder: "web, env=prod" });
  const error = h("p", { id: "create-error", class: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", id: "create-submit" }, "Create");
  const progress = h("div", { id: "create-progress", "aria-live": "polite" });
  gen.addEventListener("click", () => {
    pw.input.value = v.randomPassword();
    pw.input.type = "text";
    const t = document.getElementById("create-password-show");
    if (t) {
      t.textContent = "hide";
      t.setAttribute("aria-pressed", "true");
    }
    v.mark(form, "create-password", null);
  });
  const form = h(
    "form",
    { id: "create-form", class: "card", novalidate: true },
    field("Name", name, "Lowercase letters, digits and '-', starting with a letter; with a count above 1 it is a prefix: web → web-1, web-2 …"),
    field("Template", template),
    field("vCPUs", cpus, "1–64"),
    field("Memory (MiB)", memory),
    field("IP pool", pool),
    field("Node", node),
    h(
      "div",
      { class: "field" },
      h("label", { for: "create-password" }, "Root password (optional)"),
      h("span", { class: "password" }, pw.wrap, gen),
      h("span", { class: "field-error", dataset: { for: "create-password" }, role: "alert" }),
    ),
    field("Count", count, "How many guests, 1–100"),
    field("Tags (comma separated, optional)", tagsIn),
    error,
    h("div", { class: "buttons" }, submit, h("a", { href: "#/guests" }, "Cancel")),
  );
  replace(root, h("section", null, h("h1", null, "New guest"), form, h("h2", null, "Progress"), progress));

  let templates: Template[] = [];
  let pools: Pool[] = [];
  const [t, p, n] = await Promise.allSettled([api().res.templateList(), api().res.poolList(), nodeNames()]);
  if (t.status === "fulfilled") templates = t.value;
  if (p.status === "fulfilled") pools = p.value;
  for (const x of templates) template.append(h("option", { value: x.name }, `${x.name} (${x.osType}, ≥ ${x.minMemoryMib} MiB)`));
  for (const x of pools) pool.append(h("option", { value: x.id }, `${x.name} ${x.cidr} (${x.free} free)`));
  if (n.status === "fulfilled") for (const x of n.value.values()) node.append(h("option", { value: x.id }, `${x.hostname || x.id}${x.online ? "" : " (offline)"}`));
  if (t.status === "rejected") error.textContent = (await failure(t.reason)).message;
  if (templates.length === 1) template.value = templates[0].name;

  const tagList = () =>
    tagsIn.value
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s);

  const check = (): boolean => {
    const c = Number(count.value);
    const tpl = templates.find((x) => x.name === template.value);
    const minMem = tpl?.minMemoryMib ?? 1;
    let nameErr = name.value ? v.guestName(name.value) : null;
    if (!nameErr && name.value && Number.isInteger(c) && c > 1) nameErr = v.guestName(`${name.value}-${c}`) ? `With count ${c} the name must leave room for "-${c}" (63 characters in all).` : null;
    const results = [
      v.mark(form, "create-name", nameErr),
      v.mark(form, "create-template", template.value ? null : "Choose a template."),
      v.mark(form, "create-cpus", v.intIn(cpus.value, 1, 64, "a number of vCPUs")),
      v.mark(form, "create-memory", v.intIn(memory.value, 1, 1048576, "memory in MiB") ?? (Number(memory.value) < minMem ? `This template needs at least ${minMem} MiB.` : null)),
      v.mark(form, "create-password", v.password(pw.input.value, false)),
      v.mark(form, "create-count", v.intIn(count.value, 1, 100, "a count")),
      v.mark(form, "create-tags", v.tags(tagList())),
    ];
    return results.every((x) => x);
  };
  for (const el of [name, cpus, memory, count, tagsIn, pw.input]) el.addEventListener("blur", () => el.value && check());
  template.addEventListener("change", () => {
    const tpl = templates.find((x) => x.name === template.value);
    if (tpl && Number(memory.value) < tpl.minMemoryMib) memory.value = String(tpl.minMemoryMib);
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    if (!check()) {
      form.querySelector<HTMLElement>("[aria-invalid=true]")?.focus();
      return;
    }
    submit.disabled = true;
    const c = Number(count.value);
    let accepted: AcceptedList;
    try {
      accepted = await api().guests.guestCreate({
        createGuest: {
          name: name.value || undefined,
          template: template.value,
          cpus: Number(cpus.value),
          memoryMib: Number(memory.value),
          pool: pool.value || undefined,
          node: node.value || undefined,
          password: pw.input.value || undefined,
          count: c > 1 ? c : undefined,
          tags: tagList().length ? tagList() : undefined,
        },
      });
    } catch (err) {
      const f = await failure(err);
      const hit = f.status === 400 || f.status === 422 ? FIELD_WORDS.find(([re]) => re.test(f.message)) : undefined;
      if (hit) v.mark(form, hit[1], f.message);
      else error.textContent = f.message;
      submit.disabled = false;
      return;
    }
    submit.disabled = false;
    accepted.operations.forEach((a, i) => {
      const label = name.value ? (accepted.operations.length > 1 ? `${name.value}-${i + 1}` : name.value) : a.guestId;
      const link = h("span", { class: "guest-link", dataset: { guestId: a.guestId } });
      let opDone = false;
      let running = false;
      const finish = () => {
        if (opDone && running && !link.firstChild) link.append(h("a", { href: `#/guests/${encodeURIComponent(a.guestId)}` }, `open ${label}`));
      };
      const off = onPage(["guest.state"], (ev) => {
        if (ev.subject !== a.guestId && (ev.data as { guest_id?: string })?.guest_id !== a.guestId) return;
        running = (ev.data as { state?: string })?.state === "running";
        finish();
      });
      const pv = opProgress(a.operationId, label, async (st, err) => {
        opDone = true;
        if (st !== "succeeded") {
          off();
          link.append(h("span", { class: "bad" }, err ?? st), " ", h("a", { href: `#/guests/${encodeURIComponent(a.guestId)}` }, "details"));
          return;
        }
        try {
          const g = await api().guests.guestGet({ id: a.guestId });
          if (g.state === "running") running = true;
          link.dataset.state = g.state;
        } catch {
          /* the event will tell */
        }
        finish();
      });
      progress.append(h("div", { class: "created", dataset: { guestId: a.guestId, opId: a.operationId } }, pv.el, link));
    });
  });
}
