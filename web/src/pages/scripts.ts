// #/scripts: OS-init profiles and boot scripts, an editor with a line-number gutter that
// shows a refused save at its line (the API's script error names it in `details.line`),
// and the guests with pending boot jobs (S19).
import type { ScriptView } from "../../../sdk/typescript/src/index";
import { api, attempt, failure, isAdmin } from "../app";
import { confirmDialog, h, replace, table } from "../dom";
import * as v from "../validate";

type Kind = "profile" | "boot";

const PROFILE_EXAMPLE = "// An OS-init profile.\nfn plan(guest) {\n    []\n}\n";
const BOOT_EXAMPLE = "// A boot script.\nfn actions(guest, params) {\n    []\n}\n";

export async function renderScripts(root: HTMLElement): Promise<void> {
  const profilesBody = h("tbody");
  const bootBody = h("tbody");
  const pendingBody = h("tbody");
  const includeSystem = h("input", { type: "checkbox", id: "pending-include-system" });

  // ---- editor ----
  const kindSel = h("select", { id: "script-kind" }, h("option", { value: "profile" }, "OS-init profile"), h("option", { value: "boot" }, "boot script"));
  const nameIn = h("input", { id: "script-name", type: "text", maxlength: 64 });
  const pub = h("input", { id: "script-public", type: "checkbox" });
  const gutter = h("div", { class: "gutter", id: "script-gutter", "aria-hidden": "true" });
  const source = h("textarea", { id: "script-source", class: "code", spellcheck: "false", wrap: "off", "aria-label": "script source", autocapitalize: "off" });
  const err = h("div", { id: "script-error", class: "form-error", role: "alert" });
  const saved = h("span", { id: "script-saved", role: "status", class: "ok" });
  const save = h("button", { type: "submit", id: "script-save" }, "Save");
  const newBtn = h("button", { type: "button", id: "script-new", class: "secondary" }, "New");
  let editing: { kind: Kind; name: string } | null = null;
  let errorLine = 0;

  const paintGutter = () => {
    const n = source.value.split("\n").length;
    const lines: Node[] = [];
    for (let i = 1; i <= n; i++) {
      if (i === errorLine) lines.push(h("span", { class: "err", dataset: { line: i } }, String(i)));
      else lines.push(document.createTextNode(`${i}\n`));
    }
    replace(gutter, lines);
    gutter.scrollTop = source.scrollTop;
  };
  source.addEventListener("input", () => {
    errorLine = 0;
    paintGutter();
  });
  source.addEventListener("scroll", () => (gutter.scrollTop = source.scrollTop));
  source.addEventListener("keydown", (e) => {
    if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey && source.dataset.tabIndents === "1") {
      e.preventDefault();
      source.setRangeText("    ", source.selectionStart, source.selectionEnd, "end");
      paintGutter();
    }
  });
  // Tab moves focus (keyboard users must be able to leave the editor) unless the
  // "Tab indents" switch is on.
  const tabToggle = h("input", { type: "checkbox", id: "script-tab-indents" });
  tabToggle.addEventListener("change", () => (source.dataset.tabIndents = tabToggle.checked ? "1" : "0"));

  const edit = (kind: Kind, s: ScriptView | null) => {
    editing = s ? { kind, name: s.name } : null;
    kindSel.value = kind;
    kindSel.disabled = !!s;
    nameIn.value = s?.name ?? "";
    nameIn.disabled = !!s;
    pub.checked = s?._public ?? false;
    source.value = s?.source ?? (kind === "profile" ? PROFILE_EXAMPLE : BOOT_EXAMPLE);
    source.readOnly = !!s?.shipped;
    save.disabled = !!s?.shipped;
    err.textContent = s?.shipped ? "Shipped with corral: read-only." : "";
    saved.textContent = "";
    errorLine = 0;
    paintGutter();
    source.focus();
  };
  newBtn.addEventListener("click", () => edit(kindSel.value as Kind, null));
  kindSel.addEventListener("change", () => {
    if (!editing && (source.value === PROFILE_EXAMPLE || source.value === BOOT_EXAMPLE || !source.value)) edit(kindSel.value as Kind, null);
  });

  const form = h(
    "form",
    { id: "script-form", class: "card", novalidate: true },
    h("h2", { id: "script-editor-title" }, "Editor"),
    h(
      "div",
      { class: "filters" },
      h("label", { for: "script-kind" }, "Kind"),
      kindSel,
      h("label", { for: "script-name" }, "Name"),
      nameIn,
      h("label", null, pub, " public (boot scripts)"),
      h("label", null, tabToggle, " Tab indents"),
      newBtn,
    ),
    h("span", { class: "field-error", dataset: { for: "script-name" } }),
    h("div", { class: "editor" }, gutter, source),
    err,
    h("div", { class: "buttons" }, save, saved),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    saved.textContent = "";
    errorLine = 0;
    const kind = (editing?.kind ?? kindSel.value) as Kind;
    const name = editing?.name ?? nameIn.value.trim();
    if (!editing && !v.mark(form, "script-name", v.scriptName(name))) return;
    if (!source.value.trim()) {
      err.textContent = "The script is empty.";
      return;
    }
    try {
      const s = api().scripts;
      const result = editing
        ? kind === "profile"
          ? await s.profileUpdate({ name, scriptSource: { source: source.value } })
          : await s.bootScriptUpdate({ name, scriptSource: { source: source.value, _public: pub.checked } })
        : kind === "profile"
          ? await s.profileCreate({ newScript: { name, source: source.value } })
          : await s.bootScriptCreate({ newScript: { name, source: source.value, _public: pub.checked } });
      editing = { kind, name: result.name };
      nameIn.disabled = true;
      kindSel.disabled = true;
      saved.textContent = "saved";
      await loadLists();
    } catch (e2) {
      const f = await failure(e2);
      const d = (f.details ?? {}) as { line?: number; column?: number };
      if (typeof d.line === "number" && d.line > 0) {
        errorLine = d.line;
        err.replaceChildren(h("span", { class: "script-error-line", dataset: { line: d.line } }, `line ${d.line}${d.column ? `, column ${d.column}` : ""}: `), f.message);
        // Put the caret on the line.
        const lines = source.value.split("\n");
        const at = lines.slice(0, d.line - 1).reduce((n, l) => n + l.length + 1, 0) + Math.max(0, (d.column ?? 1) - 1);
        source.focus();
        source.setSelectionRange(at, at);
      } else {
        err.textContent = f.message;
      }
      paintGutter();
    }
  });

  const scriptRow = (kind: Kind, s: ScriptView) => {
    const open = h("button", { type: "button", class: "secondary small open-script" }, s.shipped ? "View" : "Edit");
    open.addEventListener("click", async () => {
      const full = await attempt(() => (kind === "profile" ? api().scripts.profileGet({ name: s.name }) : api().scripts.bootScriptGet({ name: s.name })));
      if (full) edit(kind, full);
    });
    const del = s.shipped ? null : h("button", { type: "button", class: "danger small delete-script" }, "Delete");
    del?.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete ${kind === "profile" ? "profile" : "boot script"} ${s.name}?`, "Delete"))) return;
      const ok = await attempt(() => (kind === "profile" ? api().scripts.profileDelete({ name: s.name }) : api().scripts.bootScriptDelete({ name: s.name })));
      if (ok !== undefined) await loadLists();
    });
    return h(
      "tr",
      { dataset: { script: s.name, kind } },
      h("td", null, s.name),
      h("td", { class: "description" }, s.description),
      h("td", null, [s.shipped ? "shipped" : "", s._public ? "public" : "private", s.system ? "system" : ""].filter((x) => x).join(", ")),
      h("td", null, open, " ", del),
    );
  };
  const loadLists = async () => {
    const [p, b] = await Promise.allSettled([api().scripts.profileList(), api().scripts.bootScriptList({ includeSystem: isAdmin() })]);
    if (p.status === "fulfilled") replace(profilesBody, p.value.length ? p.value.map((s) => scriptRow("profile", s)) : h("tr", null, h("td", { colspan: 4 }, "None.")));
    else replace(profilesBody, h("tr", null, h("td", { colspan: 4, class: "bad" }, (await failure(p.reason)).message)));
    if (b.status === "fulfilled") replace(bootBody, b.value.length ? b.value.map((s) => scriptRow("boot", s)) : h("tr", null, h("td", { colspan: 4 }, "None.")));
    else replace(bootBody, h("tr", null, h("td", { colspan: 4, class: "bad" }, (await failure(b.reason)).message)));
  };
  const loadPending = async () => {
    try {
      const list = await api().scripts.bootJobPendingGuests({ includeSystem: includeSystem.checked });
      replace(
        pendingBody,
        list.length
          ? list.map((g) => h("tr", { dataset: { guestId: g.guestId } }, h("td", null, h("a", { href: `#/guests/${encodeURIComponent(g.guestId)}` }, g.name)), h("td", { class: "pending" }, String(g.pending))))
          : h("tr", null, h("td", { colspan: 2 }, "No guest has pending boot jobs.")),
      );
    } catch (e) {
      replace(pendingBody, h("tr", null, h("td", { colspan: 2, class: "bad" }, (await failure(e)).message)));
    }
  };
  includeSystem.addEventListener("change", () => void loadPending());

  replace(
    root,
    h(
      "section",
      null,
      h("h1", null, "Scripts"),
      h("h2", null, "OS-init profiles"),
      table("profiles-table", ["Name", "Description", "", ""], profilesBody),
      h("h2", null, "Boot scripts"),
      table("boot-scripts-table", ["Name", "Description", "", ""], bootBody),
      form,
      h("h2", { id: "pending-jobs" }, "Guests with pending boot jobs"),
      h("p", null, h("label", null, includeSystem, " include system jobs")),
      table("pending-table", ["Guest", "Pending jobs"], pendingBody),
    ),
  );
  edit("profile", null);
  await Promise.all([loadLists(), loadPending()]);
}
